/* danlu's CPU kernels for quantized Linears: y[rows, n] = x[rows, k] . W[n, k]^T, W held as codes.

   Activations are quantized on the fly to int8, symmetric per block of 32 columns (scale = absmax / 127,
   codes round-half-even of x / scale), and multiplied with the weight codes in int32 per block; blocks are
   summed in fp32. Two weight formats, both exactly danlu's stored layouts (no repacking, no second copy):

   - int8: codes [n, k] signed, one fp32 scale per output row (symmetric per channel);
   - int4: codes [n, k/2] two per byte, the even column in the high nibble (quantizers.pack_int4),
     w = u * scale[n, g] + offset[n, g] per group g of `group` columns (a multiple of 32).

   With AVX2 a block is one 32-byte multiply-add (maddubs); without it the same integer arithmetic runs
   in plain loops. Single-threaded: one call per Linear, the caller owns the parallelism. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#define QB 32 /* activation block: columns per activation scale */
#define RB 4  /* activation rows multiplied per pass over a weight row */
#define PREFETCH 2 /* tiles ahead that q8_tile and q4_tile prefetch */

/* One row x[k] to int8 codes q[k] and scales s[k/32]; with `deinterleave`, each block's codes are stored
   even columns first, then odd (the order the int4 kernel unpacks a block's 16 bytes in). `sums` (int4
   only) gets the fp32 sum of x over each group of `group` columns: the offsets' share of the product. */
static void quantize_row(const float *x, int64_t k, int8_t *q, float *s, int deinterleave, float *sums,
                         int64_t group) {
    for (int64_t b = 0; b < k / QB; b++) {
        const float *xb = x + b * QB;
        float amax = 0.0f;
        for (int i = 0; i < QB; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float scale = amax / 127.0f;
        s[b] = scale;
        int8_t *qb = q + b * QB;
        for (int i = 0; i < QB; i++) {
            int j = deinterleave ? (i % 2) * (QB / 2) + i / 2 : i;
            qb[j] = scale > 0.0f ? (int8_t)nearbyintf(xb[i] / scale) : 0;
        }
    }
    if (sums) {
        for (int64_t g = 0; g * group < k; g++) {
            float acc = 0.0f;
            int64_t end = (g + 1) * group < k ? (g + 1) * group : k;
            for (int64_t i = g * group; i < end; i++) acc += x[i];
            sums[g] = acc;
        }
    }
}

typedef struct {
    int8_t *q;
    float *s;
    float *sums;
} Quantized;

static int quantize_rows(const float *x, int64_t rows, int64_t k, int deinterleave, int64_t group,
                         Quantized *out) {
    int64_t groups = group > 0 ? (k + group - 1) / group : 0;
    out->q = malloc((size_t)(rows * k));
    out->s = malloc(sizeof(float) * (size_t)(rows * (k / QB)));
    out->sums = groups ? malloc(sizeof(float) * (size_t)(rows * groups)) : NULL;
    if (!out->q || !out->s || (groups && !out->sums)) return -1;
    for (int64_t r = 0; r < rows; r++)
        quantize_row(x + r * k, k, out->q + r * k, out->s + r * (k / QB), deinterleave,
                     groups ? out->sums + r * groups : NULL, group);
    return 0;
}

static void release(Quantized *qz) {
    free(qz->q);
    free(qz->s);
    free(qz->sums);
}

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* sum over 32 lanes of u * a in 8 int32 lanes (as fp32): u unsigned bytes, a signed; the pair sums of
   maddubs cannot saturate here (|u| <= 128, |a| <= 127) */
static inline __m256 dot_block(__m256i u, __m256i a) {
    __m256i pairs = _mm256_maddubs_epi16(u, a);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

/* 32 int4 codes of one block (16 bytes) as bytes, even columns in the low lane, odd in the high */
static inline __m256i unpack_block(const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m128i m4 = _mm_set1_epi8(0x0F);
    __m128i even = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    __m128i odd = _mm_and_si128(b, m4);
    return _mm256_set_m128i(odd, even);
}
#endif

/* int32 sum of 32 products of signed int8 weight codes and activation codes */
static inline int32_t dot_q8_scalar(const int8_t *w, const int8_t *a) {
    int32_t acc = 0;
    for (int i = 0; i < QB; i++) acc += (int32_t)w[i] * (int32_t)a[i];
    return acc;
}

/* int32 sum of 32 products of one int4 block (16 bytes) and its deinterleaved activation codes */
static inline int32_t dot_q4_scalar(const uint8_t *p, const int8_t *a) {
    int32_t acc = 0;
    for (int i = 0; i < QB / 2; i++) acc += (int32_t)(p[i] >> 4) * a[i] + (int32_t)(p[i] & 0x0F) * a[QB / 2 + i];
    return acc;
}

#ifdef __AVX2__
/* NW weight rows from j0 times NR activation rows from r0: NW * NR independent accumulators, so the
   fused multiply-adds of consecutive blocks do not wait on each other (one chain is latency-bound) */
static inline __attribute__((always_inline)) void q8_tile(const Quantized *qz, int64_t r0, int NR,
                                                          int64_t k, const int8_t *w, const float *wscale,
                                                          int64_t j0, int NW, int64_t n, float *y) {
    int64_t nb = k / QB;
    __m256 acc[4][RB];
    for (int i = 0; i < NW; i++)
        for (int r = 0; r < NR; r++) acc[i][r] = _mm256_setzero_ps();
    /* the tile reads NW * k contiguous bytes; ask for the ones PREFETCH tiles ahead at the same pace
       (the next rows stream from memory when the matrix is larger than the caches: the LM head) */
    const char *ahead = (const char *)(w + (j0 + PREFETCH * NW) * k);
    const char *last = (const char *)(w + n * k);
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < NW; i++) {
            const char *p = ahead + (b * NW + i) * QB;
            if (p < last) _mm_prefetch(p, _MM_HINT_T0);
        }
        __m256i wb[4], uw[4];
        for (int i = 0; i < NW; i++) {
            wb[i] = _mm256_loadu_si256((const __m256i *)(w + (j0 + i) * k + b * QB));
            uw[i] = _mm256_sign_epi8(wb[i], wb[i]); /* |w|: -128 reads back as unsigned 128 */
        }
        for (int r = 0; r < NR; r++) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(qz->q + (r0 + r) * k + b * QB));
            __m256 sa = _mm256_set1_ps(qz->s[(r0 + r) * nb + b]);
            for (int i = 0; i < NW; i++) /* |w| * (a * sign(w)) = w * a */
                acc[i][r] = _mm256_fmadd_ps(dot_block(uw[i], _mm256_sign_epi8(a, wb[i])), sa, acc[i][r]);
        }
    }
    for (int i = 0; i < NW; i++)
        for (int r = 0; r < NR; r++) y[(r0 + r) * n + j0 + i] = hsum(acc[i][r]) * wscale[j0 + i];
}
#endif

/* every row: one activation row against 4 weight rows at a time; several against 2 weight rows, every
   group of RB activation rows in turn while those weight rows are in L1 (the weights are read from
   memory once per call, whatever the number of rows) */
static void q8_rows(const Quantized *qz, int64_t rows, int64_t k, const int8_t *w, const float *wscale,
                    int64_t n, float *y) {
#ifdef __AVX2__
    int64_t j = 0;
    if (rows == 1) {
        for (; j + 4 <= n; j += 4) q8_tile(qz, 0, 1, k, w, wscale, j, 4, n, y);
        for (; j < n; j++) q8_tile(qz, 0, 1, k, w, wscale, j, 1, n, y);
        return;
    }
    for (; j < n; j += 2) {
        int two = j + 2 <= n;
        for (int64_t r0 = 0; r0 < rows; r0 += RB) {
            switch ((rows - r0 < RB ? rows - r0 : RB) * 2 + two) {
                case 2: q8_tile(qz, r0, 1, k, w, wscale, j, 1, n, y); break;
                case 3: q8_tile(qz, r0, 1, k, w, wscale, j, 2, n, y); break;
                case 4: q8_tile(qz, r0, 2, k, w, wscale, j, 1, n, y); break;
                case 5: q8_tile(qz, r0, 2, k, w, wscale, j, 2, n, y); break;
                case 6: q8_tile(qz, r0, 3, k, w, wscale, j, 1, n, y); break;
                case 7: q8_tile(qz, r0, 3, k, w, wscale, j, 2, n, y); break;
                case 8: q8_tile(qz, r0, 4, k, w, wscale, j, 1, n, y); break;
                default: q8_tile(qz, r0, 4, k, w, wscale, j, 2, n, y); break;
            }
        }
    }
#else
    int64_t nb = k / QB;
    for (int64_t j = 0; j < n; j++)
        for (int64_t r = 0; r < rows; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++)
                acc += (float)dot_q8_scalar(w + j * k + b * QB, qz->q + r * k + b * QB) * qz->s[r * nb + b];
            y[r * n + j] = acc * wscale[j];
        }
#endif
}

/* y[rows, n] = x[rows, k] . (codes * scale)^T; k a multiple of 32. 0, or -1 when out of memory. */
int danlu_q8_linear(const float *x, int64_t rows, int64_t k, const int8_t *w, const float *wscale,
                    int64_t n, float *y) {
    if (rows == 0) return 0; /* nothing to allocate: malloc(0) may answer NULL */
    Quantized qz;
    if (quantize_rows(x, rows, k, 0, 0, &qz)) {
        release(&qz);
        return -1;
    }
    q8_rows(&qz, rows, k, w, wscale, n, y);
    release(&qz);
    return 0;
}

/* the offsets' share of y[r, j]: sum over groups of offset[j, g] * (sum of x[r] over g) */
static inline float offset_share(const Quantized *qz, int64_t r, const float *oj, int64_t groups) {
    const float *sums = qz->sums + r * groups;
    float o = 0.0f;
    for (int64_t g = 0; g < groups; g++) o += oj[g] * sums[g];
    return o;
}

#ifdef __AVX2__
/* q8_tile for int4 codes: per group, the blocks' products summed with their activation scales, then
   times the group's weight scale */
static inline __attribute__((always_inline)) void q4_tile(const Quantized *qz, int64_t r0, int NR,
                                                          int64_t k, const uint8_t *w, const float *scale,
                                                          const float *offset, int64_t group, int64_t j0,
                                                          int NW, int64_t n, float *y) {
    int64_t nb = k / QB, groups = (k + group - 1) / group, per_group = group / QB;
    __m256 acc[4][RB];
    for (int i = 0; i < NW; i++)
        for (int r = 0; r < NR; r++) acc[i][r] = _mm256_setzero_ps();
    const char *ahead = (const char *)(w + (j0 + PREFETCH * NW) * (k / 2));
    const char *last = (const char *)(w + n * (k / 2));
    for (int64_t g = 0; g < groups; g++) {
        __m256 gacc[4][RB];
        for (int i = 0; i < NW; i++)
            for (int r = 0; r < NR; r++) gacc[i][r] = _mm256_setzero_ps();
        int64_t b_end = (g + 1) * per_group < nb ? (g + 1) * per_group : nb;
        for (int64_t b = g * per_group; b < b_end; b++) {
            for (int i = 0; i < NW; i += 2) { /* as in q8_tile, at 16 bytes per row and block */
                const char *p = ahead + (b * NW + i) * (QB / 2);
                if (p < last) _mm_prefetch(p, _MM_HINT_T0);
            }
            __m256i u[4];
            for (int i = 0; i < NW; i++) u[i] = unpack_block(w + (j0 + i) * (k / 2) + b * (QB / 2));
            for (int r = 0; r < NR; r++) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(qz->q + (r0 + r) * k + b * QB));
                __m256 sa = _mm256_set1_ps(qz->s[(r0 + r) * nb + b]);
                for (int i = 0; i < NW; i++) gacc[i][r] = _mm256_fmadd_ps(dot_block(u[i], a), sa, gacc[i][r]);
            }
        }
        for (int i = 0; i < NW; i++) {
            __m256 sg = _mm256_set1_ps(scale[(j0 + i) * groups + g]);
            for (int r = 0; r < NR; r++) acc[i][r] = _mm256_fmadd_ps(gacc[i][r], sg, acc[i][r]);
        }
    }
    for (int i = 0; i < NW; i++)
        for (int r = 0; r < NR; r++)
            y[(r0 + r) * n + j0 + i] = hsum(acc[i][r]) + offset_share(qz, r0 + r, offset + (j0 + i) * groups, groups);
}
#endif

/* as q8_rows */
static void q4_rows(const Quantized *qz, int64_t rows, int64_t k, const uint8_t *w, const float *scale,
                    const float *offset, int64_t group, int64_t n, float *y) {
#ifdef __AVX2__
    int64_t j = 0;
    if (rows == 1) {
        for (; j + 4 <= n; j += 4) q4_tile(qz, 0, 1, k, w, scale, offset, group, j, 4, n, y);
        for (; j < n; j++) q4_tile(qz, 0, 1, k, w, scale, offset, group, j, 1, n, y);
        return;
    }
    for (; j < n; j += 2) {
        int two = j + 2 <= n;
        for (int64_t r0 = 0; r0 < rows; r0 += RB) {
            switch ((rows - r0 < RB ? rows - r0 : RB) * 2 + two) {
                case 2: q4_tile(qz, r0, 1, k, w, scale, offset, group, j, 1, n, y); break;
                case 3: q4_tile(qz, r0, 1, k, w, scale, offset, group, j, 2, n, y); break;
                case 4: q4_tile(qz, r0, 2, k, w, scale, offset, group, j, 1, n, y); break;
                case 5: q4_tile(qz, r0, 2, k, w, scale, offset, group, j, 2, n, y); break;
                case 6: q4_tile(qz, r0, 3, k, w, scale, offset, group, j, 1, n, y); break;
                case 7: q4_tile(qz, r0, 3, k, w, scale, offset, group, j, 2, n, y); break;
                case 8: q4_tile(qz, r0, 4, k, w, scale, offset, group, j, 1, n, y); break;
                default: q4_tile(qz, r0, 4, k, w, scale, offset, group, j, 2, n, y); break;
            }
        }
    }
#else
    int64_t nb = k / QB, groups = (k + group - 1) / group, per_group = group / QB;
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *wj = w + j * (k / 2);
        for (int64_t r = 0; r < rows; r++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < groups; g++) {
                float gacc = 0.0f;
                int64_t b_end = (g + 1) * per_group < nb ? (g + 1) * per_group : nb;
                for (int64_t b = g * per_group; b < b_end; b++)
                    gacc += (float)dot_q4_scalar(wj + b * (QB / 2), qz->q + r * k + b * QB) * qz->s[r * nb + b];
                acc += gacc * scale[j * groups + g];
            }
            y[r * n + j] = acc + offset_share(qz, r, offset + j * groups, groups);
        }
    }
#endif
}

/* y[rows, n] = x[rows, k] . (u * scale + offset)^T, u packed two per byte; k and group multiples of 32.
   0, or -1 when out of memory. */
int danlu_q4_linear(const float *x, int64_t rows, int64_t k, const uint8_t *w, const float *scale,
                    const float *offset, int64_t group, int64_t n, float *y) {
    if (rows == 0) return 0; /* nothing to allocate: malloc(0) may answer NULL */
    Quantized qz;
    if (quantize_rows(x, rows, k, 1, group, &qz)) {
        release(&qz);
        return -1;
    }
    q4_rows(&qz, rows, k, w, scale, offset, group, n, y);
    release(&qz);
    return 0;
}

/* which code path this build took: 2 with AVX2, 0 plain loops */
int danlu_simd_level(void) {
#ifdef __AVX2__
    return 2;
#else
    return 0;
#endif
}
