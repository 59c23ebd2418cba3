"""LibriSpeech-layout datasets and audio loading, on the real LibriSpeech sample and on files written here."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FILE_ID, LIBRISPEECH, TRANSCRIPT, split_dir

from asr import UserError
from asr.audio import SAMPLE_RATE, AudioError, load_audio
from asr.data.dataset import DEFAULT_SEARCH_ROOTS, DataError, check_file_id, find_utterance, read_split

TEST_CLEAN_IDS = {
    "1089-134686-0000", "1089-134686-0001", "1089-134691-0000", "1089-134691-0001",
    "1995-1837-0001", "2830-3980-0043", "4507-16021-0012", "8455-210777-0068",
}


# ---------------------------------------------------------------- read_split

def test_read_split_real_test_clean():
    test_clean = split_dir("test-clean")
    utts = read_split(test_clean)
    assert len(utts) == 8
    assert {u.file_id for u in utts} == TEST_CLEAN_IDS
    assert read_split(test_clean) == utts  # stable order
    by_id = {u.file_id: u for u in utts}
    u = by_id[FILE_ID]
    assert u.transcript.startswith("HE HOPED THERE WOULD BE STEW FOR DINNER")
    assert u.transcript == TRANSCRIPT
    assert (u.speaker, u.chapter) == ("1089", "134686")
    assert u.path == test_clean / "1089" / "134686" / f"{FILE_ID}.flac"
    for u in utts:
        assert u.path.is_file()
        assert u.file_id == f"{u.speaker}-{u.chapter}-{u.file_id.rsplit('-', 1)[1]}"
        assert u.path.parent == test_clean / u.speaker / u.chapter
        assert u.transcript and u.transcript == u.transcript.strip()


def test_read_split_skips_lines_without_audio(tmp_path):
    chapter = tmp_path / "split" / "12" / "34"
    chapter.mkdir(parents=True)
    sf.write(chapter / "12-34-0001.wav", np.zeros(1600, dtype=np.float32), SAMPLE_RATE)
    (chapter / "12-34.trans.txt").write_text("12-34-0001 HELLO THERE\n12-34-0002 NO AUDIO FOR THIS ONE\n\n")
    utts = read_split(tmp_path / "split")
    assert [(u.file_id, u.transcript, u.path.suffix) for u in utts] == [("12-34-0001", "HELLO THERE", ".wav")]


def test_read_split_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no utterances"):
        read_split(tmp_path / "empty")


# ---------------------------------------------------------------- find_utterance

def test_find_utterance_in_a_split_folder():
    test_clean = split_dir("test-clean")
    u = find_utterance(FILE_ID, test_clean)
    assert u.transcript == TRANSCRIPT
    assert u.path == test_clean / "1089/134686" / f"{FILE_ID}.flac"
    assert (u.speaker, u.chapter) == ("1089", "134686")
    # the same utterance read_split gives
    assert u == {x.file_id: x for x in read_split(test_clean)}[FILE_ID]


def test_find_utterance_in_a_folder_of_splits():
    split_dir("test-clean")
    u = find_utterance(FILE_ID, LIBRISPEECH)
    assert u.path == LIBRISPEECH / "test-clean/1089/134686" / f"{FILE_ID}.flac"
    assert u.transcript == TRANSCRIPT
    # an id of another split of the same root
    dev = find_utterance("1272-128104-0001", str(LIBRISPEECH))
    assert dev.path.parent == split_dir("dev-clean") / "1272" / "128104"


def test_find_utterance_without_dataset_uses_default_roots_relative_to_cwd(tmp_path, monkeypatch):
    split_dir("test-clean")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="--dataset"):
        find_utterance(FILE_ID)  # neither data/demo nor data/LibriSpeech exists here
    assert "data/LibriSpeech" in DEFAULT_SEARCH_ROOTS
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "LibriSpeech").symlink_to(LIBRISPEECH, target_is_directory=True)
    u = find_utterance(FILE_ID)
    assert u.transcript == TRANSCRIPT
    assert u.path.resolve() == (LIBRISPEECH / "test-clean/1089/134686" / f"{FILE_ID}.flac").resolve()
    assert "data/LibriSpeech/test-clean/1089/134686" in u.path.as_posix()  # found through ./data/LibriSpeech


def test_find_utterance_unknown_id():
    test_clean = split_dir("test-clean")
    with pytest.raises(DataError, match="1089-134686-9999 not found"):
        find_utterance("1089-134686-9999", test_clean)
    with pytest.raises(DataError, match="not found"):
        find_utterance("1-2-3", test_clean)  # no such speaker folder at all


def test_find_utterance_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        find_utterance(FILE_ID, tmp_path / "nope")


def test_find_utterance_listed_but_audio_missing(tmp_path):
    chapter = tmp_path / "12" / "34"
    chapter.mkdir(parents=True)
    (chapter / "12-34.trans.txt").write_text("12-34-0001 HELLO\n")
    with pytest.raises(DataError, match="audio file is missing"):
        find_utterance("12-34-0001", tmp_path)


@pytest.mark.parametrize("bad", ["../../etc/passwd", f"{FILE_ID}/../x", "", "abc", "1089-134686", "1089_134686_0000",
                                 f"{FILE_ID}\n", f" {FILE_ID}", "1089-134686-00a0"])
def test_check_file_id_refuses_anything_but_digits(bad, tmp_path):
    with pytest.raises(DataError, match="invalid file id"):
        check_file_id(bad)
    # and find_utterance refuses it before looking anywhere
    with pytest.raises(DataError, match="invalid file id"):
        find_utterance(bad, tmp_path)


def test_check_file_id_accepts_librispeech_ids():
    assert check_file_id(FILE_ID) == FILE_ID
    assert check_file_id("8455-210777-0068") == "8455-210777-0068"


def test_data_and_audio_errors_are_user_errors():
    # the CLI turns UserError into a one-line "Error: ..." without a traceback
    assert issubclass(DataError, UserError)
    assert issubclass(AudioError, UserError)


# ---------------------------------------------------------------- load_audio

def test_load_audio_real_flac():
    path = split_dir("test-clean") / "1089/134686" / f"{FILE_ID}.flac"
    info = sf.info(str(path))
    assert info.samplerate == SAMPLE_RATE and info.channels == 1
    wave = load_audio(path)
    assert isinstance(wave, torch.Tensor)
    assert wave.dtype == torch.float32
    assert wave.ndim == 1
    assert wave.shape[0] == info.frames
    assert 0 < wave.abs().max().item() <= 1.0
    reference, _ = sf.read(str(path), dtype="float32")
    assert np.array_equal(wave.numpy(), reference)  # 16 kHz mono is passed through untouched


def test_load_audio_resamples_stereo_44k_wav(tmp_path):
    rate, seconds = 44100, 1.5
    t = np.arange(int(rate * seconds)) / rate
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    stereo = np.stack([0.5 * tone, 0.1 * tone], axis=1)  # mono mix = 0.3 * tone
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, rate, subtype="FLOAT")
    assert sf.info(str(path)).channels == 2

    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert wave.shape[0] == pytest.approx(len(t) * SAMPLE_RATE / rate, abs=1)
    # the channels are averaged, not one of them taken: the 440 Hz tone keeps 0.3 of its amplitude
    middle = wave[SAMPLE_RATE // 10: -SAMPLE_RATE // 10]
    assert middle.abs().max().item() == pytest.approx(0.3, abs=0.01)
    expected = 0.3 * np.sin(2 * np.pi * 440 * np.arange(len(wave)) / SAMPLE_RATE)
    assert np.abs(wave.numpy() - expected)[SAMPLE_RATE // 10: -SAMPLE_RATE // 10].max() < 0.01
    # another target rate
    assert load_audio(path, 8000).shape[0] == pytest.approx(len(t) * 8000 / rate, abs=1)


def test_load_audio_int16_mono_wav_is_scaled_to_unit_range(tmp_path):
    path = tmp_path / "pcm16.wav"
    sf.write(path, np.array([0, 16384, -32768, 32767] * 100, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    wave = load_audio(path)
    assert wave.shape == (400,)
    assert wave[:4].tolist() == pytest.approx([0.0, 0.5, -1.0, 32767 / 32768])


@pytest.mark.parametrize("content", [b"this is not audio at all", b""])
def test_load_audio_unreadable_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.flac"
    path.write_bytes(content)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_load_audio_missing_file_names_the_file(tmp_path):
    path = tmp_path / "missing.wav"
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in str(err.value)


def test_load_audio_empty_wav(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="empty") as err:
        load_audio(path)
    assert str(path) in str(err.value)
