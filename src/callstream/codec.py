"""G.711 codec: mu-law and A-law bytes to and from 16-bit PCM.

Units: one G.711 byte is one sample at 8 kHz; PCM samples are native-endian int16.  Decoders
accept any bytes-like input (bytes, bytearray, memoryview, 1-D uint8 numpy arrays), only read it,
and return a new int16 array, or fill and return ``out`` when the caller passes one (reuse it to
avoid allocating per call).  Stereo decoding interleaves two channels of equal length into an
``(n, 2)`` array: column 0 is the left channel (the agent), column 1 the right (the caller).

Two backends do the work with identical checks and results: ``"c"``, the kernel in ``csrc/``
compiled into ``callstream._mulaw``, and ``"numpy"``, 256-entry tables computed from the G.711
formulas.  ``BACKEND`` names the one the module-level functions use: ``"c"`` when the extension
imports, unless the environment sets ``CALLSTREAM_CODEC=numpy``; if the extension is missing,
``"numpy"`` with one ``RuntimeWarning`` (or ``ImportError`` when ``CALLSTREAM_CODEC=c``).
``backends()`` gives every available backend by name, for tests and benchmarks.
"""

from __future__ import annotations

import os
import warnings
from typing import Final, TypeAlias

import numpy as np

from callstream.native import DROPPED as _NATIVE_DROPPED
from callstream.native import IMPORT_ERROR as _IMPORT_ERROR
from callstream.native import kernel as _kernel

# the C kernel, or None (not built, or CALLSTREAM_NATIVE drops it: the numpy backend takes over); see native.py
_ffi, _lib = _kernel("mulaw")

__all__ = [
    "ALAW_SILENCE",
    "BACKEND",
    "ULAW_CLIP",
    "ULAW_SILENCE",
    "CBackend",
    "NumpyBackend",
    "backends",
    "decode_alaw",
    "decode_alaw_stereo",
    "decode_ulaw",
    "decode_ulaw_stereo",
    "encode_alaw",
    "encode_ulaw",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview | np.ndarray

# G.711 constants come from the C header when the kernel is built; the numpy fallback has to carry
# the same numbers (the tests check both against the standard).
if _lib is not None:
    ULAW_SILENCE: Final[int] = _lib.CS_ULAW_SILENCE  # code of PCM 0
    ALAW_SILENCE: Final[int] = _lib.CS_ALAW_SILENCE  # code PCM 0 encodes to (decodes to +8)
    ULAW_BIAS: Final[int] = _lib.CS_ULAW_BIAS
    ULAW_CLIP: Final[int] = _lib.CS_ULAW_CLIP  # largest magnitude the mu-law encoder tells apart
else:
    ULAW_SILENCE, ALAW_SILENCE, ULAW_BIAS, ULAW_CLIP = 0xFF, 0xD5, 0x84, 32635


def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = ((((u & 0x0F) << 3) + ULAW_BIAS) << ((u >> 4) & 0x07)) - ULAW_BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a >> 4) & 0x07
    t = (a & 0x0F) << 4
    magnitude = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


_TABLES: Final = {"ulaw": _ulaw_table(), "alaw": _alaw_table()}
# floor(log2(i)) for i >= 1, 0 for i == 0: the segment search of both encoders
_LOG2: Final = np.array([max(i.bit_length() - 1, 0) for i in range(256)], dtype=np.int32)


_INT16: Final = np.dtype(np.int16)


def _as_codes(data: BytesLike, name: str) -> tuple[BytesLike, int]:
    """G.711 input as a contiguous buffer (not copied, except a strided numpy array) and its
    length in bytes."""
    if type(data) is bytes or type(data) is bytearray:
        return data, len(data)
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"{name} has dtype {data.dtype}, expected uint8")
        if data.ndim != 1:
            raise ValueError(f"{name} has shape {data.shape}, expected 1-D")
        data = np.ascontiguousarray(data)
        return data, data.size
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{name} must be bytes-like, not {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous")
    return view, view.nbytes


def _as_pcm(pcm: object) -> np.ndarray:
    """A contiguous 1-D int16 array of samples, refusing anything that would lose information."""
    if isinstance(pcm, np.ndarray) and pcm.dtype == np.int16:
        samples = pcm
    else:
        try:
            samples = np.asarray(pcm)
        except OverflowError:
            raise ValueError("pcm has samples outside int16") from None
        if samples.size == 0 and not isinstance(pcm, np.ndarray):  # [] is float64 to numpy
            samples = samples.astype(np.int16)
        if samples.dtype.kind not in "iu":
            raise ValueError(f"pcm has dtype {samples.dtype}, expected int16 or in-range integers")
        if samples.size and (samples.min() < -32768 or samples.max() > 32767):
            raise ValueError(f"pcm has samples outside int16: {samples.min()}..{samples.max()}")
        samples = samples.astype(np.int16)
    if samples.ndim > 1:
        raise ValueError(f"pcm has shape {samples.shape}, expected 1-D")
    return np.ascontiguousarray(samples).reshape(-1)


def _output(out: np.ndarray | None, shape: tuple[int, ...], *inputs: BytesLike) -> np.ndarray:
    """``out`` checked against ``shape``, or a new int16 array of that shape."""
    if out is None:
        return np.empty(shape, dtype=_INT16)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out is a {type(out).__name__}, expected a numpy int16 array")
    if out.dtype is not _INT16 and out.dtype != _INT16:
        raise ValueError(f"out has dtype {out.dtype}, expected int16")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    if not out.flags.carray:  # C-contiguous, aligned and writable
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        raise ValueError("out is not C-contiguous and aligned")
    for data in inputs:  # immutable bytes cannot be the memory of a writable array
        if type(data) is not bytes and np.may_share_memory(out, np.frombuffer(data, np.uint8)):
            raise ValueError("out overlaps the input")
    return out


class _Codec:
    """The public operations; a backend supplies the three ``_*_into`` kernels."""

    name: str

    def decode_ulaw(self, src: BytesLike, out: np.ndarray | None = None) -> np.ndarray:
        """Decode mu-law bytes to int16 PCM, one sample per byte (8 kHz in, 8 kHz out).

        Returns a new 1-D int16 array of ``len(src)`` samples, or ``out`` filled in place: a
        writable, C-contiguous int16 array of exactly that shape, not overlapping ``src``.
        Raises ``ValueError`` for a bad ``out`` or a numpy ``src`` that is not 1-D uint8, and
        ``TypeError`` when ``src`` is not bytes-like.  Empty input gives an empty array.
        """
        return self._decode("ulaw", src, out)

    def decode_ulaw_stereo(
        self, left: BytesLike, right: BytesLike, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Decode two mu-law channels of n bytes each into interleaved int16 of shape (n, 2).

        ``out[:, 0]`` is ``left`` (the agent) and ``out[:, 1]`` is ``right`` (the caller).
        ``ValueError`` when the lengths differ, otherwise as ``decode_ulaw``; ``out`` must have
        shape (n, 2).
        """
        return self._decode_stereo("ulaw", left, right, out)

    def encode_ulaw(self, pcm: object) -> bytes:
        """Encode int16 PCM to mu-law bytes (standard G.711: bias 0x84, clip at 32635).

        ``pcm`` is a scalar or 1-D sequence that numpy turns into int16 without loss: an int16
        array or integers in [-32768, 32767].  Returns one byte per sample; PCM 0 encodes to
        0xFF.  Raises ``ValueError`` for floats, other non-integer dtypes, out-of-range values or
        more than one dimension.
        """
        return self._encode("ulaw", pcm)

    def decode_alaw(self, src: BytesLike, out: np.ndarray | None = None) -> np.ndarray:
        """As ``decode_ulaw``, for A-law."""
        return self._decode("alaw", src, out)

    def decode_alaw_stereo(
        self, left: BytesLike, right: BytesLike, out: np.ndarray | None = None
    ) -> np.ndarray:
        """As ``decode_ulaw_stereo``, for A-law."""
        return self._decode_stereo("alaw", left, right, out)

    def encode_alaw(self, pcm: object) -> bytes:
        """As ``encode_ulaw``, for A-law (the reference 13-bit encoder; PCM 0 gives 0xD5)."""
        return self._encode("alaw", pcm)

    def _decode(self, law: str, src: BytesLike, out: np.ndarray | None) -> np.ndarray:
        codes, n = _as_codes(src, "src")
        out = _output(out, (n,), codes)
        if n:
            self._decode_into(law, out, codes, n)
        return out

    def _decode_stereo(
        self, law: str, left: BytesLike, right: BytesLike, out: np.ndarray | None
    ) -> np.ndarray:
        lhs, n = _as_codes(left, "left")
        rhs, n_right = _as_codes(right, "right")
        if n != n_right:
            raise ValueError(f"left has {n} bytes but right has {n_right}")
        out = _output(out, (n, 2), lhs, rhs)
        if n:
            self._decode_stereo_into(law, out, lhs, rhs, n)
        return out

    def _encode(self, law: str, pcm: object) -> bytes:
        samples = _as_pcm(pcm)
        codes = np.empty(samples.size, dtype=np.uint8)
        if samples.size:
            self._encode_into(law, codes, samples)
        return codes.tobytes()

    # Kernels: buffers come checked (contiguous, lengths n agree, out writable int16).
    def _decode_into(self, law: str, out: np.ndarray, codes: BytesLike, n: int) -> None:
        raise NotImplementedError

    def _decode_stereo_into(
        self, law: str, out: np.ndarray, left: BytesLike, right: BytesLike, n: int
    ) -> None:
        raise NotImplementedError

    def _encode_into(self, law: str, codes: np.ndarray, samples: np.ndarray) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class NumpyBackend(_Codec):
    """Table lookups and vectorized formulas in numpy: the fallback, about 10x slower than C."""

    name = "numpy"

    def _decode_into(self, law: str, out: np.ndarray, codes: BytesLike, n: int) -> None:
        indices = np.frombuffer(codes, dtype=np.uint8)
        np.take(_TABLES[law], indices, out=out, mode="clip")  # uint8 indices are in range

    def _decode_stereo_into(
        self, law: str, out: np.ndarray, left: BytesLike, right: BytesLike, n: int
    ) -> None:
        out[:, 0] = _TABLES[law][np.frombuffer(left, dtype=np.uint8)]
        out[:, 1] = _TABLES[law][np.frombuffer(right, dtype=np.uint8)]

    def _encode_into(self, law: str, codes: np.ndarray, samples: np.ndarray) -> None:
        x = samples.astype(np.int32)
        negative = x < 0
        if law == "ulaw":
            magnitude = np.minimum(np.abs(x), ULAW_CLIP) + ULAW_BIAS
            exponent = _LOG2[magnitude >> 7]
            mantissa = (magnitude >> (exponent + 3)) & 0x0F
            code = ~(np.where(negative, 0x80, 0) | (exponent << 4) | mantissa)
        else:
            x >>= 3
            v = np.where(negative, ~x, x)  # -x - 1 for negative samples
            seg = _LOG2[v >> 4]
            mantissa = (v >> np.maximum(seg, 1)) & 0x0F
            code = ((seg << 4) | mantissa) ^ np.where(negative, 0x55, 0xD5)
        np.bitwise_and(code, 0xFF, out=code)
        codes[:] = code


class CBackend(_Codec):
    """The C kernel; ``portable=True`` forces its scalar table path (for tests and benchmarks)."""

    def __init__(self, *, portable: bool = False) -> None:
        if _lib is None:
            raise ImportError("the C extension callstream._mulaw is not built") from _IMPORT_ERROR
        suffix = "_portable" if portable else ""
        self.name = "c-portable" if portable else "c"
        self._decode_fns = {law: getattr(_lib, f"cs_{law}_decode{suffix}") for law in _TABLES}
        self._stereo_fns = {
            law: getattr(_lib, f"cs_{law}_decode_stereo{suffix}") for law in _TABLES
        }
        self._encode_fns = {law: getattr(_lib, f"cs_{law}_encode") for law in _TABLES}

    @staticmethod
    def path() -> str:
        """The vector path the kernel picked for this CPU: ``"avx2"`` or ``"portable"``."""
        return _ffi.string(_lib.cs_g711_path()).decode("ascii")

    # from_buffer(type, obj, True): no copy, and refuses read-only memory for the outputs
    def _decode_into(self, law: str, out: np.ndarray, codes: BytesLike, n: int) -> None:
        self._decode_fns[law](
            _ffi.from_buffer("int16_t[]", out, True), _ffi.from_buffer("uint8_t[]", codes), n
        )

    def _decode_stereo_into(
        self, law: str, out: np.ndarray, left: BytesLike, right: BytesLike, n: int
    ) -> None:
        self._stereo_fns[law](
            _ffi.from_buffer("int16_t[]", out, True),
            _ffi.from_buffer("uint8_t[]", left),
            _ffi.from_buffer("uint8_t[]", right),
            n,
        )

    def _encode_into(self, law: str, codes: np.ndarray, samples: np.ndarray) -> None:
        self._encode_fns[law](
            _ffi.from_buffer("uint8_t[]", codes, True),
            _ffi.from_buffer("int16_t[]", samples),
            samples.size,
        )


def backends() -> dict[str, _Codec]:
    """Every backend this install offers, by name: ``"numpy"`` always, ``"c"`` and
    ``"c-portable"`` when the extension is built."""
    found: dict[str, _Codec] = {}
    if _lib is not None:
        found["c"] = CBackend()
        found["c-portable"] = CBackend(portable=True)
    found["numpy"] = NumpyBackend()
    return found


def _choose() -> _Codec:
    wanted = os.environ.get("CALLSTREAM_CODEC", "").strip().lower()
    if wanted not in ("", "c", "numpy"):
        raise ValueError(f"CALLSTREAM_CODEC is {wanted!r}, expected 'c', 'numpy' or unset")
    if wanted == "numpy":
        return NumpyBackend()
    if _lib is None and wanted == "":
        if "mulaw" not in _NATIVE_DROPPED:  # CALLSTREAM_NATIVE asked for numpy: nothing to warn about
            warnings.warn(
                f"callstream._mulaw is not built ({_IMPORT_ERROR}); G.711 falls back to numpy, "
                "about 10x slower",
                RuntimeWarning,
                stacklevel=2,
            )
        return NumpyBackend()
    return CBackend()  # ImportError when CALLSTREAM_CODEC=c and the extension is missing


_BACKEND: Final = _choose()
BACKEND: Final[str] = _BACKEND.name

decode_ulaw = _BACKEND.decode_ulaw
decode_ulaw_stereo = _BACKEND.decode_ulaw_stereo
encode_ulaw = _BACKEND.encode_ulaw
decode_alaw = _BACKEND.decode_alaw
decode_alaw_stereo = _BACKEND.decode_alaw_stereo
encode_alaw = _BACKEND.encode_alaw
