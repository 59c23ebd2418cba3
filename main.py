"""Classic entry point, kept for existing scripts and the MLproject:

    python main.py --epoch=20 --batch=20                      # train, register, promote
    python main.py --train=False --registered_model=SpeechRecognitionModel \\
        --model_stage=Production --file_id=1089-134686-0000   # validate one utterance
"""

import click

from asr.cli import friendly_errors, quiet_mlflow_bars, run_train, run_validate, settings
from asr.config import click_options, from_dict
from asr.settings import TrainConfig, ValidateConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--train", type=click.BOOL, default=True, show_default=True,
              help="True: train a model; False: validate a registered model on --file_id")
@click_options(TrainConfig, ValidateConfig)
@friendly_errors
def main(train: bool, **options) -> None:
    """Train (default) or validate a speech recognition model tracked in MLflow."""
    quiet_mlflow_bars()
    if train:
        # The MLproject passes every parameter, most at their defaults: for a --resume, only the values that differ
        # from the defaults are settings the user asked for (None).
        run_train(from_dict(TrainConfig, options), None)
    else:
        run_validate(settings(ValidateConfig, options))


if __name__ == "__main__":
    main()
