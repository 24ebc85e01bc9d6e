// Dot-product goldens from llama.cpp's own CPU kernels, for `ferry-kernels`'s
// `tests/ggml_dots.rs`: for each weight type, random weight rows and activations, the
// activations quantized by ggml-cpu's `quantize_row_q8_*`, and the results of ggml's
// `ggml_vec_dot_*` (llama.cpp's single-token path) and, for Q4_0/Q5_0/Q8_0, of
// `llamafile_sgemm` (tinyBLAS, its batched path) for every (row, token) pair.
//
// Built against the libggml-cpu.so of llama-cpp-python 0.3.36 compiled natively
// (CMAKE_ARGS="-DGGML_NATIVE=ON", as for the other goldens) on an AVX-512 VNNI machine:
//
//   L=/work/scratch/llamavenv/lib/python3.11/site-packages/llama_cpp/lib
//   gcc -O2 -mf16c -o /tmp/ggml_dots scripts/goldens/ggml_dots.c -L$L -lggml-cpu -lggml-base
//       -Wl,-rpath,$L   (one line)
//   /tmp/ggml_dots crates/ferry-kernels/tests/data/ggml_dots.bin
//
// File format (little-endian): "FGD1", u32 count, then per type: u32 ggml type id, u32 rows,
// u32 tokens, u32 cols, u32 has_sgemm, weight rows (rows x row bytes), f32 activations
// (tokens x cols), quantized activations (tokens x row bytes of the vec_dot type), f32
// vec_dot results (rows x tokens, row-major), f32 sgemm results (same, only if has_sgemm).
#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ggml_compute_params {
    int ith, nth;
    size_t wsize;
    void *wdata;
    void *threadpool;
    bool use_ref;
};

typedef void (*vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_cpu_init(void);
bool llamafile_sgemm(const struct ggml_compute_params *, int64_t, int64_t, int64_t, const void *,
                     int64_t, const void *, int64_t, void *, int64_t, int, int, int);
void quantize_row_q8_0(const float *, void *, int64_t);
void quantize_row_q8_1(const float *, void *, int64_t);
void quantize_row_q8_K(const float *, void *, int64_t);
void ggml_vec_dot_q4_0_q8_0(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q4_1_q8_1(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_0_q8_0(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_1_q8_1(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q8_0_q8_0(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q4_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q6_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}
/* Uniform in [-1, 1). */
static float unit(void) { return (float)next() / (float)(1u << 30) - 1.0f; }
static void put_f16(uint8_t *p, float v) {
    uint16_t h = _cvtss_sh(v, 0);
    memcpy(p, &h, 2);
}

struct ty {
    const char *name;
    int id, bs, ts, act, ats, cols, sgemm;
    vec_dot_fn dot;
    void (*quant)(const float *, void *, int64_t);
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT\n", argv[0]);
        return 2;
    }
    ggml_cpu_init();
    // Types: id, block elements, block bytes, activation type id, its block bytes.
    struct ty tys[] = {
        {"Q4_0", 2, 32, 18, 8, 34, 352, 1, ggml_vec_dot_q4_0_q8_0, quantize_row_q8_0},
        {"Q4_1", 3, 32, 20, 9, 36, 352, 0, ggml_vec_dot_q4_1_q8_1, quantize_row_q8_1},
        {"Q5_0", 6, 32, 22, 8, 34, 352, 1, ggml_vec_dot_q5_0_q8_0, quantize_row_q8_0},
        {"Q5_1", 7, 32, 24, 9, 36, 352, 0, ggml_vec_dot_q5_1_q8_1, quantize_row_q8_1},
        {"Q8_0", 8, 32, 34, 8, 34, 352, 1, ggml_vec_dot_q8_0_q8_0, quantize_row_q8_0},
        {"Q4_K", 12, 256, 144, 15, 292, 512, 0, ggml_vec_dot_q4_K_q8_K, quantize_row_q8_K},
        {"Q5_K", 13, 256, 176, 15, 292, 512, 0, ggml_vec_dot_q5_K_q8_K, quantize_row_q8_K},
        {"Q6_K", 14, 256, 210, 15, 292, 512, 0, ggml_vec_dot_q6_K_q8_K, quantize_row_q8_K},
    };
    const uint32_t rows = 6, toks = 5;
    uint32_t count = sizeof tys / sizeof tys[0];
    FILE *f = fopen(argv[1], "wb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    fwrite("FGD1", 1, 4, f);
    fwrite(&count, 4, 1, f);
    for (uint32_t i = 0; i < count; i++) {
        struct ty *t = &tys[i];
        uint32_t cols = t->cols, nb = cols / t->bs;
        size_t wrb = (size_t)nb * t->ts, arb = (size_t)nb * t->ats;
        uint8_t *w = malloc(wrb * rows), *qa = malloc(arb * toks);
        float *x = malloc(sizeof(float) * cols * toks);
        float *dot = malloc(sizeof(float) * rows * toks), *gemm = malloc(sizeof(float) * rows * toks);
        for (size_t j = 0; j < wrb * rows; j++) w[j] = (uint8_t)next();
        // Realistic scales: d ~ 0.01, m ~ -0.05 (as the Rust tests' random weights).
        for (size_t b = 0; b < (size_t)nb * rows; b++) {
            uint8_t *blk = w + b * t->ts;
            float d = 0.01f + 0.01f * unit(), m = 0.05f + 0.01f * unit();
            if (t->id == 14) {
                put_f16(blk + 208, d);
            } else {
                put_f16(blk, d);
                if (t->id == 3 || t->id == 7 || t->id == 12 || t->id == 13) put_f16(blk + 2, m);
            }
        }
        for (size_t j = 0; j < (size_t)cols * toks; j++) x[j] = 2.0f * unit();
        for (uint32_t k = 0; k < toks; k++) t->quant(x + (size_t)k * cols, qa + k * arb, cols);
        for (uint32_t r = 0; r < rows; r++)
            for (uint32_t k = 0; k < toks; k++)
                t->dot(cols, &dot[r * toks + k], 0, w + r * wrb, 0, qa + k * arb, 0, 1);
        uint32_t has = 0;
        if (t->sgemm) {
            struct ggml_compute_params p = {0, 1, 0, NULL, NULL, false};
            float *c = malloc(sizeof(float) * rows * toks);
            // C[token * ldc + row]; leading dimensions in blocks.
            if (!llamafile_sgemm(&p, rows, toks, nb, w, nb, qa, nb, c, rows, t->id, t->act, 0)) {
                fprintf(stderr, "%s: llamafile_sgemm declined\n", t->name);
                return 1;
            }
            for (uint32_t r = 0; r < rows; r++)
                for (uint32_t k = 0; k < toks; k++) gemm[r * toks + k] = c[k * rows + r];
            free(c);
            has = 1;
        }
        uint32_t hdr[5] = {(uint32_t)t->id, rows, toks, cols, has};
        fwrite(hdr, 4, 5, f);
        fwrite(w, 1, wrb * rows, f);
        fwrite(x, sizeof(float), (size_t)cols * toks, f);
        fwrite(qa, 1, arb * toks, f);
        fwrite(dot, sizeof(float), rows * toks, f);
        if (has) fwrite(gemm, sizeof(float), rows * toks, f);
        int same = 0;
        for (uint32_t j = 0; has && j < rows * toks; j++) same += memcmp(&dot[j], &gemm[j], 4) == 0;
        fprintf(stderr, "%s: %u x %u x %u%s", t->name, rows, toks, cols, has ? "" : "\n");
        if (has) fprintf(stderr, ", vec_dot == sgemm bitwise: %d/%u\n", same, rows * toks);
        free(w), free(qa), free(x), free(dot), free(gemm);
    }
    fclose(f);
    return 0;
}
