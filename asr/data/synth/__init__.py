"""Offline demo corpus: synthetic speech in the LibriSpeech on-disk layout, in English (the default), Spanish,
German or French (``SynthConfig.language``; see ``languages``).

Why: the toolkit must train and validate end to end on a fresh machine with no
download. Speech comes from eSpeak NG (bundled in the PyPI wheel ``espeakng-loader``,
driven through ctypes); text comes from the ``wordfreq`` word list of the language.

Sources and licences (also written to ``<root>/README.md`` and ``docs/demo_corpus.md``):

* eSpeak NG 1.52 (GPL-3.0-or-later) is loaded at run time from the ``espeakng-loader``
  wheel, which bundles the library and ``espeak-ng-data`` (the wheel declares no
  licence of its own). Audio produced by the program is not covered by the GPL.
* Words: the top words of the language in ``wordfreq`` 3.1 (code Apache-2.0, word-frequency
  data CC BY-SA 4.0, built from Wikipedia, subtitles, news, books, web text and more).
  Sentences are random word sequences, so transcripts carry CC BY-SA 4.0 attribution.

Voices generalise better than hours, so English training uses 40 voices (8 English accents,
each paired with a different espeak variant, each with its own base pitch, range and
rate, jittered per utterance); dev and test get 2 voices each, built from
accent+variant pairs that never occur in training. The other languages have 1-3 accents, so their
36 training voices leave the 4 held-out variants out altogether.

Reproducibility: every random choice flows from ``SynthConfig.seed`` through explicit numpy
generators, and libespeak-ng is loaded afresh for every utterance (see ``Espeak``), so the
same config gives byte-identical files whatever the number of workers. Linux/POSIX only.
"""
