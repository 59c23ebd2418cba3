"""libespeak-ng through ctypes, loaded afresh for every utterance so that each one depends on its own arguments
alone (the library keeps wave-generator state across utterances that no API resets)."""

from __future__ import annotations

import _ctypes
import ctypes
import os
from typing import Self

import numpy as np

from asr import UserError

INSTALL_HINT = "pip install espeakng-loader==0.2.4"


class SynthError(UserError):
    """The speech engine or word list is unusable, or the output folder is not ours to overwrite."""


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS, _INIT_DONT_EXIT = 2, 0x8000
_POS_CHARACTER, _CHARS_UTF8, _PHONEMES_IPA = 1, 1, 2
_RATE, _PITCH, _RANGE = 1, 3, 4


class Espeak:
    """A freshly loaded libespeak-ng (synchronous mode, samples via callback); use as a context manager.

    libespeak-ng keeps wave-generator state across utterances (pitch-flutter phase, gain
    control, echo buffer) that no API resets, so a second utterance from one loaded instance
    differs from the same utterance spoken first. Loading the library afresh for every
    utterance (about 3 ms) makes each one a function of its own arguments alone.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader

            self.path = espeakng_loader.get_library_path()
            lib = ctypes.CDLL(self.path)
            data = espeakng_loader.get_data_path()
        except (ImportError, OSError, RuntimeError) as exc:
            raise SynthError(f"espeak-ng TTS engine unavailable ({exc}); install it: {INSTALL_HINT}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        uint, ptr = ctypes.c_uint, ctypes.c_void_p
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, uint, ctypes.c_int, uint, uint, ptr, ptr]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib = lib
        self.native_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INIT_DONT_EXIT)
        if self.native_rate <= 0:
            self.close()
            raise SynthError(f"espeak-ng failed to initialise with data at {data}; reinstall: {INSTALL_HINT}")
        self.version = lib.espeak_Info(None).decode().split()[0]
        self._chunks: list[bytes] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds only a raw pointer
        lib.espeak_SetSynthCallback(self._callback)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Terminate and unload, so the next instance starts from the library's initial state."""
        self._lib.espeak_Terminate()
        _ctypes.dlclose(self._lib._handle)

    def _collect(self, wav: ctypes.Array, n: int, _events: int) -> int:
        if n > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, 2 * n))
        return 0  # 0 = keep synthesising

    def set_voice(self, name: str) -> None:
        if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise SynthError(f"espeak-ng has no voice {name!r}; check espeak-ng-data/voices")

    def speak(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
        """int16 samples at `native_rate`; only the first call per instance is reproducible."""
        self.set_voice(voice)
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(param, value, 0)
        self._lib.espeak_ng_SetRandSeed(seed)  # breath noise uses espeak's generator ...
        ctypes.CDLL(None).srand(seed & 0xFFFFFFFF)  # ... and libc rand()
        self._chunks.clear()
        raw = text.encode()
        if self._lib.espeak_Synth(raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise SynthError(f"espeak-ng could not synthesise {text!r}")
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16)  # complete once espeak_Synth returns

    def phonemes(self, text: str) -> str:
        """IPA for `text` in the current voice (used to vet the vocabulary)."""
        buf = ctypes.create_string_buffer(text.encode())
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        out = []
        while ptr.value:
            out.append(self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA).decode())
        return " ".join(out)


def speak(text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int) -> tuple[np.ndarray, int]:
    """Reproducibly synthesise one utterance with a freshly loaded library: (int16 samples, sample rate)."""
    if _already_loaded():
        raise SynthError(
            "libespeak-ng is already loaded in this process, so its state would carry over; "
            "synthesise in a process of its own (SynthConfig.workers >= 2)"
        )
    with Espeak() as tts:
        return tts.speak(text, voice, rate, pitch, pitch_range, seed), tts.native_rate


def _already_loaded() -> bool:
    try:
        import espeakng_loader

        handle = ctypes.CDLL(espeakng_loader.get_library_path(), mode=os.RTLD_NOLOAD)._handle
    except (ImportError, OSError, RuntimeError):
        return False
    _ctypes.dlclose(handle)
    return True
