/* G.711 mu-law / A-law kernels (see mulaw.h for the contract).
 *
 * Theory of operation
 * -------------------
 * Decoding is a pure function of one byte, so the portable path is a 256-entry table that the
 * compiler computes from the G.711 formulas below (no table is typed in by hand).
 *
 * The AVX2 path computes the same formula on 32 bytes at a time, which beats a table because
 * x86 has no fast byte-indexed 16-bit gather.  Every quantity fits in a byte until the last
 * multiply, so the byte lanes use pshufb as a 16-entry lookup:
 *
 *   mu-law  u = ~c;  |x| = (8 * (u & 15) + 132) * 2^((u >> 4) & 7) - 132
 *   A-law   a = c ^ 0x55, seg = (a >> 4) & 7, m = a & 15;
 *           |x| = (8m + 4) * 2            if seg == 0
 *                 (8m + 132) * 2^seg      otherwise
 *
 * Both factors are <= 252 and <= 128, their product <= 32256 fits an int16, so after widening
 * to 16-bit lanes one pmullw gives the magnitude.  The sign comes from psignw with the widened
 * (signed) byte that has bit 7 set exactly when the sample is negative: ~c for mu-law (zero
 * only for code 0xFF, whose magnitude is zero anyway), ~a | 1 for A-law.  The high nibble index
 * keeps the sign bit (values 8..15), so the nibble tables simply repeat.
 *
 * Stereo decoding interleaves the left and right bytes first (punpcklbw/punpckhbw plus a lane
 * fix-up) and then decodes the interleaved bytes as one mono stream, which writes interleaved
 * int16 frames directly.  Tails shorter than one vector go through the table.  Outputs of 4 MiB
 * and more are written with non-temporal stores after a short head that aligns dst to 32 bytes:
 * they do not fit in cache anyway, and skipping the read-for-ownership of every output line is
 * what takes a 16 MiB block from memory-bound ~3 GB/s to over 5 GB/s of input.
 *
 * Encoding is a branch-free scalar formula the compiler auto-vectorizes; it is compiled twice
 * (default and AVX2 target) and chosen at run time like the decoders.  The choice is made on
 * every call with __builtin_cpu_supports (one load and test), so there is no mutable state.
 */
#include <stddef.h>
#include <stdint.h>

#include "mulaw.h"

/* CS_G711_NO_SIMD builds only the portable path (to check it compiles where AVX2 cannot). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(CS_G711_NO_SIMD)
#define CS_X86_AVX2 1
#include <immintrin.h>
#define CS_AVX2 __attribute__((target("avx2")))
#endif

/* ---- tables, computed by the compiler from the formulas -------------------------------- */

#define ULAW_MAG(u) ((((((u) & 0x0F) << 3) + CS_ULAW_BIAS) << (((u) >> 4) & 0x07)) - CS_ULAW_BIAS)
#define ULAW_OF(u) ((int16_t)(((u) & 0x80) ? -ULAW_MAG(u) : ULAW_MAG(u)))
#define ULAW_CODE(c) ULAW_OF((c) ^ 0xFF)

#define ALAW_SEG(a) (((a) >> 4) & 0x07)
#define ALAW_MAG(a)                                                                  \
    (ALAW_SEG(a) == 0 ? ((((a) & 0x0F) << 4) + 8)                                    \
                      : ((((a) & 0x0F) << 4) + 0x108) << (ALAW_SEG(a) - 1))
#define ALAW_OF(a) ((int16_t)(((a) & 0x80) ? ALAW_MAG(a) : -ALAW_MAG(a)))
#define ALAW_CODE(c) ALAW_OF((c) ^ 0x55)

#define ROW(F, h)                                                                    \
    F((h) + 0), F((h) + 1), F((h) + 2), F((h) + 3), F((h) + 4), F((h) + 5), F((h) + 6), \
        F((h) + 7), F((h) + 8), F((h) + 9), F((h) + 10), F((h) + 11), F((h) + 12),   \
        F((h) + 13), F((h) + 14), F((h) + 15)
#define TABLE(F)                                                                     \
    {ROW(F, 0x00), ROW(F, 0x10), ROW(F, 0x20), ROW(F, 0x30), ROW(F, 0x40), ROW(F, 0x50), \
     ROW(F, 0x60), ROW(F, 0x70), ROW(F, 0x80), ROW(F, 0x90), ROW(F, 0xA0), ROW(F, 0xB0), \
     ROW(F, 0xC0), ROW(F, 0xD0), ROW(F, 0xE0), ROW(F, 0xF0)}

static const int16_t ulaw_table[256] = TABLE(ULAW_CODE);
static const int16_t alaw_table[256] = TABLE(ALAW_CODE);

/* ---- portable path ------------------------------------------------------------------------ */

static inline void table_decode(const int16_t *restrict table, int16_t *restrict dst,
                                const uint8_t *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = table[src[i]];
}

static inline void table_decode_stereo(const int16_t *restrict table, int16_t *restrict dst,
                                       const uint8_t *restrict left,
                                       const uint8_t *restrict right, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dst[2 * i] = table[left[i]];
        dst[2 * i + 1] = table[right[i]];
    }
}

void cs_ulaw_decode_portable(int16_t *dst, const uint8_t *src, size_t n)
{
    table_decode(ulaw_table, dst, src, n);
}

void cs_ulaw_decode_stereo_portable(int16_t *dst, const uint8_t *left, const uint8_t *right,
                                    size_t n)
{
    table_decode_stereo(ulaw_table, dst, left, right, n);
}

void cs_alaw_decode_portable(int16_t *dst, const uint8_t *src, size_t n)
{
    table_decode(alaw_table, dst, src, n);
}

void cs_alaw_decode_stereo_portable(int16_t *dst, const uint8_t *left, const uint8_t *right,
                                    size_t n)
{
    table_decode_stereo(alaw_table, dst, left, right, n);
}

/* Standard G.711 mu-law encoder: bias 0x84, clip 32635, no zero trap.  The exponent is the
 * number of powers of two from 2^8 to 2^14 that the biased magnitude reaches, written as a sum
 * of comparisons so that the loop vectorizes. */
static inline uint8_t ulaw_encode1(int16_t sample)
{
    int32_t x = sample;
    int32_t neg = -(int32_t)(x < 0);                 /* 0 or -1 */
    int32_t mag = (x ^ neg) - neg;                   /* |x|, 0..32768 */
    mag = (mag > CS_ULAW_CLIP ? CS_ULAW_CLIP : mag) + CS_ULAW_BIAS;
    int32_t exponent = (mag >= 0x100) + (mag >= 0x200) + (mag >= 0x400) + (mag >= 0x800) +
                       (mag >= 0x1000) + (mag >= 0x2000) + (mag >= 0x4000);
    int32_t mantissa = (mag >> (exponent + 3)) & 0x0F;
    return (uint8_t)~((neg & 0x80) | (exponent << 4) | mantissa);
}

/* Standard G.711 A-law encoder (13-bit, as in the reference linear2alaw). */
static inline uint8_t alaw_encode1(int16_t sample)
{
    int32_t x = (int32_t)sample >> 3;                /* arithmetic shift on all our compilers */
    int32_t neg = -(int32_t)(x < 0);
    int32_t v = x ^ neg;                             /* x, or -x - 1 when negative: 0..4095 */
    int32_t seg = (v >= 0x20) + (v >= 0x40) + (v >= 0x80) + (v >= 0x100) + (v >= 0x200) +
                  (v >= 0x400) + (v >= 0x800);
    int32_t shift = seg + (seg == 0);
    int32_t aval = (seg << 4) | ((v >> shift) & 0x0F);
    return (uint8_t)(aval ^ (0xD5 ^ (neg & 0x80)));
}

static inline void ulaw_encode_loop(uint8_t *restrict dst, const int16_t *restrict src,
                                    size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = ulaw_encode1(src[i]);
}

static inline void alaw_encode_loop(uint8_t *restrict dst, const int16_t *restrict src,
                                    size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = alaw_encode1(src[i]);
}

/* ---- AVX2 path -------------------------------------------------------------------------- */

#ifdef CS_X86_AVX2

#define REP2(...) __VA_ARGS__, __VA_ARGS__
#define NIBBLE_TABLE(F)                                                                \
    _mm256_setr_epi8(REP2((char)F(0), (char)F(1), (char)F(2), (char)F(3), (char)F(4),  \
                          (char)F(5), (char)F(6), (char)F(7), (char)F(8), (char)F(9),  \
                          (char)F(10), (char)F(11), (char)F(12), (char)F(13),          \
                          (char)F(14), (char)F(15)))
#define BASE_ULAW(m) (8 * (m) + CS_ULAW_BIAS)
#define EIGHT_M(m) (8 * (m))
#define POW_ULAW(e) (1 << ((e) & 7))
#define OFF_ALAW(s) (((s) & 7) == 0 ? 4 : 132)
#define POW_ALAW(s) (((s) & 7) == 0 ? 2 : 1 << ((s) & 7))

/* Outputs at least this large are written with non-temporal stores: they cannot stay in cache
 * anyway, and skipping the read-for-ownership doubles the write bandwidth. */
#define STREAM_MIN_BYTES ((size_t)4 << 20) /* 4 MiB */

enum { LAW_ULAW, LAW_ALAW };

static inline CS_AVX2 __attribute__((always_inline)) void store32(int16_t *dst, __m256i v,
                                                                  int stream)
{
    if (stream)
        _mm256_stream_si256((__m256i *)dst, v);
    else
        _mm256_storeu_si256((__m256i *)dst, v);
}

/* 32 G.711 codes -> 32 int16 samples at dst */
static inline CS_AVX2 __attribute__((always_inline)) void decode32(int law, int16_t *dst,
                                                                   __m256i c, int stream)
{
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256i base, pow, sign, bias;
    if (law == LAW_ULAW) {
        __m256i u = _mm256_xor_si256(c, _mm256_set1_epi8((char)0xFF));
        __m256i e = _mm256_and_si256(_mm256_srli_epi16(u, 4), nibble);
        base = _mm256_shuffle_epi8(NIBBLE_TABLE(BASE_ULAW), _mm256_and_si256(u, nibble));
        pow = _mm256_shuffle_epi8(NIBBLE_TABLE(POW_ULAW), e);
        sign = u;
        bias = _mm256_set1_epi16(CS_ULAW_BIAS);
    } else {
        __m256i a = _mm256_xor_si256(c, _mm256_set1_epi8(0x55));
        __m256i s = _mm256_and_si256(_mm256_srli_epi16(a, 4), nibble);
        base = _mm256_add_epi8(
            _mm256_shuffle_epi8(NIBBLE_TABLE(EIGHT_M), _mm256_and_si256(a, nibble)),
            _mm256_shuffle_epi8(NIBBLE_TABLE(OFF_ALAW), s));
        pow = _mm256_shuffle_epi8(NIBBLE_TABLE(POW_ALAW), s);
        sign = _mm256_or_si256(_mm256_xor_si256(c, _mm256_set1_epi8((char)0xAA)),
                               _mm256_set1_epi8(1));
        bias = _mm256_setzero_si256();
    }
    __m256i b0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(base));
    __m256i b1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(base, 1));
    __m256i p0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(pow));
    __m256i p1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(pow, 1));
    __m256i s0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(sign));
    __m256i s1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(sign, 1));
    __m256i m0 = _mm256_sub_epi16(_mm256_mullo_epi16(b0, p0), bias);
    __m256i m1 = _mm256_sub_epi16(_mm256_mullo_epi16(b1, p1), bias);
    store32(dst, _mm256_sign_epi16(m0, s0), stream);
    store32(dst + 16, _mm256_sign_epi16(m1, s1), stream);
}

/* Number of leading items (of item_bytes each) to handle separately so that dst becomes
 * 32-byte aligned; n itself (no streaming) when that is impossible or not worth it. */
static inline size_t stream_head(const void *dst, size_t n, size_t item_bytes)
{
    uintptr_t addr = (uintptr_t)dst;
    if (n * item_bytes < STREAM_MIN_BYTES || addr % item_bytes != 0)
        return n;
    return ((32 - addr % 32) % 32) / item_bytes;
}

static inline CS_AVX2 __attribute__((always_inline)) void decode_avx2(
    int law, int16_t *restrict dst, const uint8_t *restrict src, size_t n)
{
    const int16_t *table = law == LAW_ULAW ? ulaw_table : alaw_table;
    size_t head = stream_head(dst, n, 2);
    size_t i = 0;
    if (head < n) {
        table_decode(table, dst, src, head);
        for (i = head; i + 32 <= n; i += 32)
            decode32(law, dst + i, _mm256_loadu_si256((const __m256i *)(src + i)), 1);
        _mm_sfence();
    } else {
        for (; i + 32 <= n; i += 32)
            decode32(law, dst + i, _mm256_loadu_si256((const __m256i *)(src + i)), 0);
    }
    table_decode(table, dst + i, src + i, n - i);
}

static inline CS_AVX2 __attribute__((always_inline)) void decode_stereo_avx2(
    int law, int16_t *restrict dst, const uint8_t *restrict left,
    const uint8_t *restrict right, size_t n)
{
    const int16_t *table = law == LAW_ULAW ? ulaw_table : alaw_table;
    size_t head = stream_head(dst, n, 4);
    int stream = head < n;
    size_t i = stream ? head : 0;
    table_decode_stereo(table, dst, left, right, i);
    for (; i + 32 <= n; i += 32) {
        __m256i l = _mm256_loadu_si256((const __m256i *)(left + i));
        __m256i r = _mm256_loadu_si256((const __m256i *)(right + i));
        __m256i lo = _mm256_unpacklo_epi8(l, r); /* frames 0-7 | 16-23 */
        __m256i hi = _mm256_unpackhi_epi8(l, r); /* frames 8-15 | 24-31 */
        if (stream) {
            decode32(law, dst + 2 * i, _mm256_permute2x128_si256(lo, hi, 0x20), 1);
            decode32(law, dst + 2 * i + 32, _mm256_permute2x128_si256(lo, hi, 0x31), 1);
        } else {
            decode32(law, dst + 2 * i, _mm256_permute2x128_si256(lo, hi, 0x20), 0);
            decode32(law, dst + 2 * i + 32, _mm256_permute2x128_si256(lo, hi, 0x31), 0);
        }
    }
    if (stream)
        _mm_sfence();
    table_decode_stereo(table, dst + 2 * i, left + i, right + i, n - i);
}

static CS_AVX2 void ulaw_decode_avx2(int16_t *dst, const uint8_t *src, size_t n)
{
    decode_avx2(LAW_ULAW, dst, src, n);
}

static CS_AVX2 void alaw_decode_avx2(int16_t *dst, const uint8_t *src, size_t n)
{
    decode_avx2(LAW_ALAW, dst, src, n);
}

static CS_AVX2 void ulaw_decode_stereo_avx2(int16_t *dst, const uint8_t *left,
                                            const uint8_t *right, size_t n)
{
    decode_stereo_avx2(LAW_ULAW, dst, left, right, n);
}

static CS_AVX2 void alaw_decode_stereo_avx2(int16_t *dst, const uint8_t *left,
                                            const uint8_t *right, size_t n)
{
    decode_stereo_avx2(LAW_ALAW, dst, left, right, n);
}

static CS_AVX2 void ulaw_encode_avx2(uint8_t *restrict dst, const int16_t *restrict src,
                                     size_t n)
{
    ulaw_encode_loop(dst, src, n);
}

static CS_AVX2 void alaw_encode_avx2(uint8_t *restrict dst, const int16_t *restrict src,
                                     size_t n)
{
    alaw_encode_loop(dst, src, n);
}

static int has_avx2(void)
{
    return __builtin_cpu_supports("avx2");
}

#define DISPATCH(fast, portable, ...)                                                      \
    do {                                                                                   \
        if (has_avx2())                                                                    \
            fast(__VA_ARGS__);                                                             \
        else                                                                               \
            portable(__VA_ARGS__);                                                         \
    } while (0)

#else /* no vector path for this target */

static int has_avx2(void)
{
    return 0;
}

#define DISPATCH(fast, portable, ...) portable(__VA_ARGS__)

#endif

/* ---- public entry points ------------------------------------------------------------------ */

void cs_ulaw_decode(int16_t *dst, const uint8_t *src, size_t n)
{
    DISPATCH(ulaw_decode_avx2, cs_ulaw_decode_portable, dst, src, n);
}

void cs_ulaw_decode_stereo(int16_t *dst, const uint8_t *left, const uint8_t *right, size_t n)
{
    DISPATCH(ulaw_decode_stereo_avx2, cs_ulaw_decode_stereo_portable, dst, left, right, n);
}

void cs_ulaw_encode(uint8_t *dst, const int16_t *src, size_t n)
{
    DISPATCH(ulaw_encode_avx2, ulaw_encode_loop, dst, src, n);
}

void cs_alaw_decode(int16_t *dst, const uint8_t *src, size_t n)
{
    DISPATCH(alaw_decode_avx2, cs_alaw_decode_portable, dst, src, n);
}

void cs_alaw_decode_stereo(int16_t *dst, const uint8_t *left, const uint8_t *right, size_t n)
{
    DISPATCH(alaw_decode_stereo_avx2, cs_alaw_decode_stereo_portable, dst, left, right, n);
}

void cs_alaw_encode(uint8_t *dst, const int16_t *src, size_t n)
{
    DISPATCH(alaw_encode_avx2, alaw_encode_loop, dst, src, n);
}

const char *cs_g711_path(void)
{
    return has_avx2() ? "avx2" : "portable";
}
