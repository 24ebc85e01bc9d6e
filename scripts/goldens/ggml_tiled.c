// Tiled K-quant matmul goldens from llama.cpp's own CPU backend, for `ferry-kernels`'s
// `kernels_give_llama_cpp_bits`: for Q4_K, Q5_K and Q6_K, random weight rows and f32
// activations multiplied by a real ggml graph (`ggml_mul_mat`, computed by
// `ggml_graph_compute_with_ctx`), which on batches takes ggml-cpu's tiled K-quant matmul
// (`ggml/src/ggml-cpu/tiled`, `ggml_compute_forward_mul_mat_tiled`: activations quantized by
// `quantize_row_q8_K`, then `tiled_run_micro_vnni_8x16` on an AVX-512 VNNI build).
// `GGML_CPU_TILED_MM_FORCE=1` is set so that batches under its 8-token floor (here 3 tokens)
// take the tiled path too; every case is also computed with `ggml_vec_dot_*_q8_K` to show
// that the two paths differ (printed to stderr). Rows (21, 45) and tokens (3, 19, 40) are ragged
// against the 16x16 micro-tiles; 21 rows x 19 tokens take the "narrow" path (<= 16 tokens per
// chunk, two 256-column slabs per weight read), 45 x 40 the standard per-slab path (20 tokens
// per chunk). The activations are stored as ggml's Q8_K rows (`quantize_row_q8_K`, the
// quantizer the graph runs; Ferry's is checked against it on `ggml_dots.bin`).
//
// Built against the libggml-cpu.so of llama-cpp-python 0.3.36 compiled natively
// (CMAKE_ARGS="-DGGML_NATIVE=ON", as for the other goldens) on an AVX-512 VNNI machine:
//
//   S=/work/scratch/llsrc/llama_cpp_python-0.3.36/vendor/llama.cpp/ggml
//   L=/work/scratch/llamavenv/lib/python3.11/site-packages/llama_cpp/lib
//   gcc -O2 -mf16c -I$S/include -o /tmp/ggml_tiled scripts/goldens/ggml_tiled.c
//       -L$L -lggml-cpu -lggml-base -Wl,-rpath,$L   (one line)
//   /tmp/ggml_tiled crates/ferry-kernels/tests/data/ggml_tiled.bin
//
// File format (little-endian): "FGT1", u32 count, then per case: u32 ggml type id, u32 rows,
// u32 tokens, u32 cols, weight rows (rows x row bytes), Q8_K activations (tokens x row bytes),
// f32 results (rows x tokens, row-major).
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-cpu.h"
#include "ggml.h"

void quantize_row_q8_K(const float *, void *, int64_t);
void ggml_vec_dot_q4_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q6_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
typedef void (*vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

static uint64_t rng = 0x243F6A8885A308D3ull;
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

struct cs {
    const char *name;
    int id, ts;
    uint32_t rows, toks, cols;
    vec_dot_fn dot;
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT\n", argv[0]);
        return 2;
    }
    setenv("GGML_CPU_TILED_MM_FORCE", "1", 1);
    ggml_cpu_init();
    struct cs cases[] = {
        {"Q4_K", GGML_TYPE_Q4_K, 144, 21, 19, 1024, ggml_vec_dot_q4_K_q8_K},
        {"Q4_K", GGML_TYPE_Q4_K, 144, 45, 40, 512, ggml_vec_dot_q4_K_q8_K},
        {"Q4_K", GGML_TYPE_Q4_K, 144, 21, 3, 512, ggml_vec_dot_q4_K_q8_K},
        {"Q5_K", GGML_TYPE_Q5_K, 176, 21, 19, 1024, ggml_vec_dot_q5_K_q8_K},
        {"Q5_K", GGML_TYPE_Q5_K, 176, 45, 40, 512, ggml_vec_dot_q5_K_q8_K},
        {"Q5_K", GGML_TYPE_Q5_K, 176, 21, 3, 512, ggml_vec_dot_q5_K_q8_K},
        {"Q6_K", GGML_TYPE_Q6_K, 210, 21, 19, 1024, ggml_vec_dot_q6_K_q8_K},
        {"Q6_K", GGML_TYPE_Q6_K, 210, 45, 40, 512, ggml_vec_dot_q6_K_q8_K},
        {"Q6_K", GGML_TYPE_Q6_K, 210, 21, 3, 512, ggml_vec_dot_q6_K_q8_K},
    };
    uint32_t count = sizeof cases / sizeof cases[0];
    FILE *f = fopen(argv[1], "wb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    fwrite("FGT1", 1, 4, f);
    fwrite(&count, 4, 1, f);
    for (uint32_t i = 0; i < count; i++) {
        struct cs *c = &cases[i];
        const uint32_t rows = c->rows, toks = c->toks, cols = c->cols, nb = cols / 256;
        const size_t wrb = (size_t)nb * c->ts, arb = (size_t)nb * 292;
        struct ggml_init_params ip = {64u << 20, NULL, false};
        struct ggml_context *ctx = ggml_init(ip);
        struct ggml_tensor *w = ggml_new_tensor_2d(ctx, c->id, cols, rows);
        struct ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols, toks);
        uint8_t *wd = w->data;
        float *xd = x->data;
        for (size_t j = 0; j < wrb * rows; j++) wd[j] = (uint8_t)next();
        // Realistic scales: d ~ 0.01, m ~ 0.05 (as ggml_dots.c).
        for (size_t b = 0; b < (size_t)nb * rows; b++) {
            uint8_t *blk = wd + b * c->ts;
            float d = 0.01f + 0.01f * unit(), m = 0.05f + 0.01f * unit();
            if (c->id == GGML_TYPE_Q6_K) {
                put_f16(blk + 208, d);
            } else {
                put_f16(blk, d);
                put_f16(blk + 2, m);
            }
        }
        for (size_t j = 0; j < (size_t)cols * toks; j++) xd[j] = 2.0f * unit();
        struct ggml_tensor *y = ggml_mul_mat(ctx, w, x);
        struct ggml_cgraph *gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, y);
        if (ggml_graph_compute_with_ctx(ctx, gf, 1) != GGML_STATUS_SUCCESS) {
            fprintf(stderr, "%s: graph compute failed\n", c->name);
            return 1;
        }
        const float *yd = y->data; // yd[t * rows + r]
        float *out = malloc(sizeof(float) * rows * toks);
        uint8_t *qa = malloc(arb * toks);
        int same = 0;
        for (uint32_t t = 0; t < toks; t++) quantize_row_q8_K(xd + (size_t)t * cols, qa + t * arb, cols);
        for (uint32_t r = 0; r < rows; r++)
            for (uint32_t t = 0; t < toks; t++) {
                float v;
                out[r * toks + t] = yd[(size_t)t * rows + r];
                c->dot(cols, &v, 0, wd + r * wrb, 0, qa + t * arb, 0, 1);
                same += memcmp(&v, &out[r * toks + t], 4) == 0;
            }
        uint32_t hdr[4] = {(uint32_t)c->id, rows, toks, cols};
        fwrite(hdr, 4, 4, f);
        fwrite(wd, 1, wrb * rows, f);
        fwrite(qa, 1, arb * toks, f);
        fwrite(out, sizeof(float), (size_t)rows * toks, f);
        fprintf(stderr, "%s: %u rows x %u tokens x %u cols, tiled == vec_dot bitwise: %d/%u\n",
                c->name, rows, toks, cols, same, rows * toks);
        free(out), free(qa);
        ggml_free(ctx);
    }
    fclose(f);
    return 0;
}
