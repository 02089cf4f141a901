"""callstream.codec: every backend against G.711 computed here, against each other, and its checks.

The oracle below is the ITU-T G.711 reference algorithm written out in plain Python, one value
at a time (the shape of the classic g711.c), independently of the vectorized code under test.
"""

from __future__ import annotations

import array
import functools
import os
import platform
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the no-extension warning has its own test
    from callstream import codec

BACKENDS = codec.backends()
C_BUILT = "c" in BACKENDS
NOT_BUILT = "callstream._mulaw is not built (run `pip install -e .` or `make install`)"
LAWS = ("ulaw", "alaw")
INT16 = np.iinfo(np.int16)


def backend_params(*names: str) -> list:
    return [
        pytest.param(name, marks=pytest.mark.skipif(name not in BACKENDS, reason=NOT_BUILT))
        for name in names
    ]


ALL = backend_params("c", "c-portable", "numpy")
C_ONLY = backend_params("c", "c-portable")


def op(backend: str, verb: str, law: str):
    return getattr(BACKENDS[backend], f"{verb}_{law}")


# ---- the oracle ------------------------------------------------------------------------------


def ulaw_to_linear(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def alaw_to_linear(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def linear_to_ulaw(x: int) -> int:
    sign = 0x80 if x < 0 else 0
    magnitude = min(abs(x), 32635) + 0x84
    exponent = magnitude.bit_length() - 8  # magnitude is 132..32767
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def linear_to_alaw(x: int) -> int:
    x >>= 3
    if x >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        x = -x - 1
    seg = next(i for i, end in enumerate(SEG_AEND) if x <= end)
    quant = (x >> 1) if seg < 2 else (x >> seg)
    return ((seg << 4) | (quant & 0x0F)) ^ mask


DECODE = {"ulaw": ulaw_to_linear, "alaw": alaw_to_linear}
ENCODE = {"ulaw": linear_to_ulaw, "alaw": linear_to_alaw}


@functools.cache
def decode_table(law: str) -> np.ndarray:
    return np.array([DECODE[law](code) for code in range(256)], dtype=np.int16)


@functools.cache
def encode_table(law: str) -> bytes:
    """Every int16 sample, -32768 first, encoded by the oracle."""
    return bytes(ENCODE[law](x) for x in range(INT16.min, INT16.max + 1))


def test_oracle_matches_published_values():
    # G.711 tables: mu-law full scale is +-32124, A-law +-32256; both have a tiny step at zero.
    assert [ulaw_to_linear(c) for c in (0x00, 0x7F, 0x80, 0xFF)] == [-32124, 0, 32124, 0]
    assert [alaw_to_linear(c) for c in (0x2A, 0x55, 0xAA, 0xD5)] == [-32256, -8, 32256, 8]
    assert [linear_to_ulaw(x) for x in (0, -1, 32767, -32768)] == [0xFF, 0x7F, 0x80, 0x00]
    assert [linear_to_alaw(x) for x in (0, -1, 32767, -32768)] == [0xD5, 0x55, 0xAA, 0x2A]


# ---- every code, every sample ----------------------------------------------------------------


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("backend", ALL)
def test_decode_every_code(backend, law):
    decoded = op(backend, "decode", law)(bytes(range(256)))
    assert decoded.dtype == np.int16
    assert decoded.shape == (256,)
    assert decoded.tolist() == decode_table(law).tolist()


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("backend", ALL)
def test_encode_every_int16(backend, law):
    samples = np.arange(INT16.min, INT16.max + 1, dtype=np.int16)
    assert op(backend, "encode", law)(samples) == encode_table(law)


@pytest.mark.parametrize("backend", ALL)
def test_silence(backend):
    be = BACKENDS[backend]
    assert be.decode_ulaw(b"\xff").tolist() == [0]
    assert be.encode_ulaw(0) == b"\xff"
    assert be.encode_ulaw(np.zeros(160, dtype=np.int16)) == b"\xff" * 160
    assert be.decode_ulaw_stereo(b"\xff" * 3, b"\xff" * 3).tolist() == [[0, 0]] * 3
    assert be.encode_alaw(0) == b"\xd5"
    assert be.decode_alaw(b"\xd5").tolist() == [8]  # A-law has no zero; silence is the +8 step


def test_constants_are_g711():
    assert (codec.ULAW_SILENCE, codec.ALAW_SILENCE) == (0xFF, 0xD5)
    assert (codec.ULAW_BIAS, codec.ULAW_CLIP) == (0x84, 32635)


@pytest.mark.parametrize("backend", ALL)
def test_ulaw_clips_at_the_exported_bound(backend):
    clip = codec.ULAW_CLIP
    encode = BACKENDS[backend].encode_ulaw
    assert encode(range(clip, INT16.max + 1)) == encode(clip) * (INT16.max + 1 - clip)
    assert encode(range(INT16.min, -clip + 1)) == encode(-clip) * (-clip - INT16.min + 1)


@pytest.mark.parametrize("backend", ALL)
def test_round_trip(backend):
    be = BACKENDS[backend]
    every = bytes(range(256))
    # mu-law has two zeros: 0x7F (-0) decodes to 0, which encodes to 0xFF (+0)
    expected = bytearray(every)
    expected[0x7F] = 0xFF
    assert be.encode_ulaw(be.decode_ulaw(every)) == bytes(expected)
    assert be.encode_alaw(be.decode_alaw(every)) == every


# ---- backends agree on arbitrary input -------------------------------------------------------

codes = st.binary(max_size=300)
pcm = st.lists(st.integers(INT16.min, INT16.max), max_size=300)


@settings(deadline=None)
@given(data=codes)
@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("backend", C_ONLY)
def test_c_decode_agrees_with_numpy(backend, law, data):
    assert np.array_equal(op(backend, "decode", law)(data), op("numpy", "decode", law)(data))


@settings(deadline=None)
@given(samples=pcm)
@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("backend", C_ONLY)
def test_c_encode_agrees_with_numpy(backend, law, samples):
    assert op(backend, "encode", law)(samples) == op("numpy", "encode", law)(samples)


@settings(deadline=None)
@given(
    pair=st.integers(0, 300).flatmap(lambda n: st.tuples(*[st.binary(min_size=n, max_size=n)] * 2))
)
@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("backend", ALL)
def test_stereo_is_the_mono_decodes_interleaved(backend, law, pair):
    left, right = pair
    decode = op(backend, "decode", law)
    stereo = op(backend, "decode", f"{law}_stereo")(left, right)
    assert stereo.dtype == np.int16
    assert stereo.shape == (len(left), 2)
    assert stereo.flags.c_contiguous
    assert np.array_equal(stereo[:, 0], decode(left))
    assert np.array_equal(stereo[:, 1], decode(right))
    assert np.array_equal(stereo.reshape(-1), decode_table(law)[list(bytes(interleave(pair)))])


def interleave(pair: tuple[bytes, bytes]) -> bytes:
    out = bytearray(2 * len(pair[0]))
    out[0::2], out[1::2] = pair
    return bytes(out)


# Lengths around the 32-byte vector width and the 4 MiB streaming-store threshold of the C kernel,
# with out shifted by one sample so that the aligned head is exercised too.
@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 8000])
@pytest.mark.parametrize("backend", ALL)
def test_lengths_around_vector_width(backend, n):
    data = np.random.default_rng(n).integers(0, 256, size=(2, n), dtype=np.uint8)
    for law in LAWS:
        assert np.array_equal(op(backend, "decode", law)(data[0]), decode_table(law)[data[0]])
        stereo = op(backend, "decode", f"{law}_stereo")(data[0], data[1])
        assert np.array_equal(stereo, decode_table(law)[data.T])


@pytest.mark.parametrize("shift", [0, 1, 2])
@pytest.mark.parametrize("backend", C_ONLY)
def test_large_blocks_with_unaligned_out(backend, shift):
    n = (3 << 20) + 5  # 6 MiB of output mono, 12 MiB stereo: above the streaming threshold
    data = np.random.default_rng(shift).integers(0, 256, size=(2, n), dtype=np.uint8)
    store = np.zeros(2 * n + 8, dtype=np.int16)
    for law in LAWS:
        table = decode_table(law)
        out = store[shift : shift + n]
        assert op(backend, "decode", law)(data[0], out=out) is out
        assert np.array_equal(out, table[data[0]])
        pairs = store[shift : shift + 2 * n].reshape(n, 2)
        op(backend, "decode", f"{law}_stereo")(data[0], data[1], out=pairs)
        assert np.array_equal(pairs, table[data.T])


# ---- inputs and outputs ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
def test_accepts_any_bytes_like(backend):
    raw = bytes(range(256))
    expected = decode_table("ulaw")
    as_array = np.frombuffer(raw, dtype=np.uint8)
    inputs = [
        raw,
        bytearray(raw),
        memoryview(raw),
        as_array,
        np.repeat(as_array, 2)[::2],  # strided
        array.array("B", raw),
        memoryview(bytes(range(256)) * 2)[256:],
    ]
    decode = BACKENDS[backend].decode_ulaw
    for src in inputs:
        assert np.array_equal(decode(src), expected), type(src)
    assert np.array_equal(
        BACKENDS[backend].decode_ulaw_stereo(bytearray(raw), as_array)[:, 1], expected
    )


@pytest.mark.parametrize("backend", ALL)
def test_empty(backend):
    be = BACKENDS[backend]
    for law in LAWS:
        mono = getattr(be, f"decode_{law}")(b"")
        assert (mono.dtype, mono.shape) == (np.int16, (0,))
        stereo = getattr(be, f"decode_{law}_stereo")(b"", bytearray())
        assert (stereo.dtype, stereo.shape) == (np.int16, (0, 2))
        for empty in ([], (), np.array([], dtype=np.int16), np.array([], dtype=np.int64)):
            assert getattr(be, f"encode_{law}")(empty) == b""


@pytest.mark.parametrize("backend", ALL)
def test_out_is_filled_and_returned(backend):
    be = BACKENDS[backend]
    out = np.full(4, 99, dtype=np.int16)
    assert be.decode_ulaw(b"\x00\x7f\x80\xff", out=out) is out
    assert out.tolist() == [-32124, 0, 32124, 0]
    pairs = np.zeros((2, 2), dtype=np.int16)
    assert be.decode_alaw_stereo(b"\xd5\x55", b"\xaa\x2a", out=pairs) is pairs
    assert pairs.tolist() == [[8, 32256], [-8, -32256]]


@pytest.mark.parametrize("backend", ALL)
def test_mismatched_lengths(backend):
    for law in LAWS:
        with pytest.raises(ValueError, match="left has 3 bytes but right has 2"):
            op(backend, "decode", f"{law}_stereo")(b"abc", b"ab")


def read_only(shape) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int16)
    out.flags.writeable = False
    return out


BAD_MONO_OUT = [
    (np.zeros(4, dtype=np.float32), "out has dtype float32, expected int16"),
    (np.zeros(4, dtype=">i2"), "out has dtype >i2, expected int16"),
    (np.zeros(4, dtype=np.uint16), "out has dtype uint16, expected int16"),
    (np.zeros(5, dtype=np.int16), r"out has shape \(5,\), expected \(4,\)"),
    (np.zeros((4, 1), dtype=np.int16), r"out has shape \(4, 1\), expected \(4,\)"),
    (np.zeros(8, dtype=np.int16)[::2], "out is not C-contiguous"),
    (read_only(4), "out is read-only"),
    (bytearray(8), "out is a bytearray, expected a numpy int16 array"),
]


@pytest.mark.parametrize(("out", "message"), BAD_MONO_OUT)
@pytest.mark.parametrize("backend", ALL)
def test_bad_out_mono(backend, out, message):
    for law in LAWS:
        with pytest.raises(ValueError, match=message):
            op(backend, "decode", law)(b"\x01\x02\x03\x04", out=out)


BAD_STEREO_OUT = [
    (np.zeros(6, dtype=np.int16), r"out has shape \(6,\), expected \(3, 2\)"),
    (np.zeros((2, 3), dtype=np.int16), r"out has shape \(2, 3\), expected \(3, 2\)"),
    (np.zeros((3, 2), dtype=np.int32), "out has dtype int32, expected int16"),
    (np.zeros((2, 3), dtype=np.int16).T, "out is not C-contiguous"),
    (read_only((3, 2)), "out is read-only"),
]


@pytest.mark.parametrize(("out", "message"), BAD_STEREO_OUT)
@pytest.mark.parametrize("backend", ALL)
def test_bad_out_stereo(backend, out, message):
    for law in LAWS:
        with pytest.raises(ValueError, match=message):
            op(backend, "decode", f"{law}_stereo")(b"abc", b"def", out=out)


@pytest.mark.parametrize("backend", ALL)
def test_out_overlapping_the_input(backend):
    memory = bytearray(16)
    out = np.frombuffer(memory, dtype=np.int16)[:4]
    with pytest.raises(ValueError, match="out overlaps the input"):
        BACKENDS[backend].decode_ulaw(memoryview(memory)[4:8], out=out)
    with pytest.raises(ValueError, match="out overlaps the input"):
        BACKENDS[backend].decode_ulaw_stereo(b"ab", memoryview(memory)[:2], out=out.reshape(2, 2))


@pytest.mark.parametrize(
    ("src", "error", "message"),
    [
        (np.zeros(4, dtype=np.int16), ValueError, "src has dtype int16, expected uint8"),
        (np.zeros((2, 2), dtype=np.uint8), ValueError, r"src has shape \(2, 2\), expected 1-D"),
        (memoryview(bytes(8))[::2], ValueError, "src is not C-contiguous"),
        ("text", TypeError, "src must be bytes-like, not str"),
        (None, TypeError, "src must be bytes-like, not NoneType"),
    ],
)
@pytest.mark.parametrize("backend", ALL)
def test_bad_src(backend, src, error, message):
    for law in LAWS:
        with pytest.raises(error, match=message):
            op(backend, "decode", law)(src)
    with pytest.raises(error, match=message.replace("src", "right")):
        BACKENDS[backend].decode_ulaw_stereo(b"\0" * 4, src)


@pytest.mark.parametrize("backend", ALL)
def test_encode_accepts_lossless_integers(backend):
    expected = bytes(linear_to_ulaw(x) for x in (-32768, -1, 0, 1, 32767))
    encode = BACKENDS[backend].encode_ulaw
    for pcm in (
        [-32768, -1, 0, 1, 32767],
        (-32768, -1, 0, 1, 32767),
        np.array([-32768, -1, 0, 1, 32767], dtype=np.int64),
        np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)[::-1][::-1],
        np.array([-32768, -1, 0, 1, 32767, 0], dtype=np.int16)[:-1],
        np.repeat(np.array([-32768, -1, 0, 1, 32767], dtype=np.int16), 2)[::2],  # strided
    ):
        assert encode(pcm) == expected
    assert encode(np.array([0, 1, 255], dtype=np.uint8)) == bytes(map(linear_to_ulaw, [0, 1, 255]))


@pytest.mark.parametrize(
    ("pcm", "message"),
    [
        ([0.5], "pcm has dtype float64"),
        (np.zeros(3, dtype=np.float32), "pcm has dtype float32"),
        ([1.0, 2.0], "pcm has dtype float64"),
        ([True], "pcm has dtype bool"),
        (["1"], "pcm has dtype <U1"),
        ([32768], "pcm has samples outside int16: 32768..32768"),
        ([-32769, 0], "pcm has samples outside int16: -32769..0"),
        (np.array([0, 70000], dtype=np.int32), "pcm has samples outside int16"),
        (np.array([65535], dtype=np.uint16), "pcm has samples outside int16"),
        ([2**70], "pcm has"),
        (np.zeros((2, 2), dtype=np.int16), r"pcm has shape \(2, 2\), expected 1-D"),
    ],
)
@pytest.mark.parametrize("backend", ALL)
def test_encode_rejects_lossy_input(backend, pcm, message):
    for law in LAWS:
        with pytest.raises(ValueError, match=message):
            op(backend, "encode", law)(pcm)


# ---- backend choice --------------------------------------------------------------------------


def test_default_backend():
    assert codec.BACKEND in ("c", "numpy")
    if C_BUILT and not os.environ.get("CALLSTREAM_CODEC"):
        assert codec.BACKEND == "c"
        assert codec.decode_ulaw.__self__.name == "c"


def test_c_extension_is_built_in_ci():
    if not os.environ.get("CI"):
        pytest.skip("only CI insists on the C extension")
    assert C_BUILT, NOT_BUILT


@pytest.mark.skipif(not C_BUILT, reason=NOT_BUILT)
def test_vector_path_where_the_cpu_has_it():
    path = codec.CBackend.path()
    assert path in ("avx2", "portable")
    if platform.machine() in ("x86_64", "AMD64"):
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            if " avx2" in cpuinfo.read():
                assert path == "avx2"


def run_python(code: str, *, hide_extension: bool = False, **env: str):
    """Run code in a fresh interpreter (warnings are errors), optionally unable to import C."""
    environment = {k: v for k, v in os.environ.items() if k != "CALLSTREAM_CODEC"} | env
    if hide_extension:
        code = "import sys; sys.modules['callstream._mulaw'] = None\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def test_falls_back_to_numpy_with_one_warning():
    result = run_python(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from callstream import codec
            import callstream.codec
        assert [w.category for w in caught] == [RuntimeWarning], caught
        assert "not built" in str(caught[0].message)
        assert codec.BACKEND == "numpy" and list(codec.backends()) == ["numpy"]
        assert codec.decode_ulaw(b"\\x00\\xff").tolist() == [-32124, 0]
        print("ok")
        """,
        hide_extension=True,
    )
    assert result.stdout == "ok\n", result.stderr


def test_environment_forces_numpy_without_warning():
    result = run_python(
        "from callstream import codec; print(codec.BACKEND, sorted(codec.backends()))",
        CALLSTREAM_CODEC="numpy",
    )
    expected = "['c', 'c-portable', 'numpy']" if C_BUILT else "['numpy']"
    assert result.stdout == f"numpy {expected}\n", result.stderr


def test_environment_demanding_c_fails_without_the_extension():
    result = run_python("import callstream.codec", hide_extension=True, CALLSTREAM_CODEC="c")
    assert result.returncode != 0
    assert "ImportError: the C extension callstream._mulaw is not built" in result.stderr


def test_environment_with_unknown_backend():
    result = run_python("import callstream.codec", CALLSTREAM_CODEC="fortran")
    assert "ValueError: CALLSTREAM_CODEC is 'fortran'" in result.stderr
