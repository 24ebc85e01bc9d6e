// Goldens for the non-matmul ops of the llama forward from llama.cpp's own CPU backend, for
// `ferry-kernels`'s `ggml_ops_give_llama_cpp_bits` test: random inputs run through ggml graphs
// (RMS norm followed by the norm weight's MUL, as llama.cpp's `build_norm` makes them; RoPE in
// GGML's normal mode, as llama-architecture models use it; SwiGLU as `ggml_swiglu_split`), on
// one thread, and the outputs.
//
// Built against the libggml of llama-cpp-python 0.3.36 compiled natively
// (CMAKE_ARGS="-DGGML_NATIVE=ON", as for the other goldens) on an AVX-512 machine:
//
//   L=/work/scratch/llamavenv/lib/python3.11/site-packages/llama_cpp/lib
//   I=<llama-cpp-python 0.3.36 source>/vendor/llama.cpp/ggml/include
//   gcc -O2 -I$I -o /tmp/ggml_ops scripts/goldens/ggml_ops.c -L$L -lggml-cpu -lggml-base
//       -Wl,-rpath,$L   (one line)
//   /tmp/ggml_ops crates/ferry-kernels/tests/data/ggml_ops.bin
//
// File format (little-endian): "FGO1", u32 count, then per case a u32 op and:
//   op 1 (rms_norm * w): u32 n, u32 rows, f32 eps, x (rows x n), w (n), y (rows x n)
//   op 2 (rope, normal): u32 head_dim, u32 heads, u32 tokens, f32 freq_base, i32 pos (tokens),
//                        x (tokens x heads x head_dim), y (same)
//   op 3 (swiglu):       u32 n, u32 rows, x (rows x n), g (rows x n), y (rows x n)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-cpu.h"
#include "ggml.h"

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint32_t next(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}
/* Uniform in [-1, 1). */
static float unit(void) { return (float)next() / (float)(1u << 30) - 1.0f; }

static FILE *out;
static uint32_t count;
static void put_u32(uint32_t v) { fwrite(&v, 4, 1, out); }
static void put_f32s(const float *p, size_t n) { fwrite(p, 4, n, out); }

static struct ggml_context *new_ctx(void) {
    struct ggml_init_params ip = {.mem_size = 64u << 20, .mem_buffer = NULL, .no_alloc = false};
    return ggml_init(ip);
}

static void compute(struct ggml_context *ctx, struct ggml_tensor *t) {
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, t);
    if (ggml_graph_compute_with_ctx(ctx, gf, 1) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "compute failed\n");
        exit(1);
    }
}

static void rms_case(uint32_t n, uint32_t rows, float scale, float eps) {
    struct ggml_context *ctx = new_ctx();
    struct ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, rows);
    struct ggml_tensor *w = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n);
    float *xd = x->data, *wd = w->data;
    for (uint32_t i = 0; i < n * rows; i++) xd[i] = unit() * scale;
    for (uint32_t i = 0; i < n; i++) wd[i] = unit() * 2.0f;
    struct ggml_tensor *y = ggml_mul(ctx, ggml_rms_norm(ctx, x, eps), w);
    compute(ctx, y);
    put_u32(1);
    put_u32(n);
    put_u32(rows);
    fwrite(&eps, 4, 1, out);
    put_f32s(xd, (size_t)n * rows);
    put_f32s(wd, n);
    put_f32s(y->data, (size_t)n * rows);
    count++;
    ggml_free(ctx);
}

static void rope_case(uint32_t hd, uint32_t heads, uint32_t tokens, float base, uint32_t max_pos) {
    struct ggml_context *ctx = new_ctx();
    struct ggml_tensor *x = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, hd, heads, tokens);
    struct ggml_tensor *pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, tokens);
    float *xd = x->data;
    int32_t *pd = pos->data;
    for (uint32_t i = 0; i < hd * heads * tokens; i++) xd[i] = unit() * 4.0f;
    for (uint32_t i = 0; i < tokens; i++) pd[i] = i < 3 ? (int32_t)i : (int32_t)(next() % max_pos);
    // llama.cpp's llama graph: ext_factor 0 (no YaRN), attn_factor 1, freq_scale 1,
    // beta_fast 32, beta_slow 1.
    struct ggml_tensor *y =
        ggml_rope_ext(ctx, x, pos, NULL, (int)hd, 0, 2048, base, 1.0f, 0.0f, 1.0f, 32.0f, 1.0f);
    compute(ctx, y);
    put_u32(2);
    put_u32(hd);
    put_u32(heads);
    put_u32(tokens);
    fwrite(&base, 4, 1, out);
    fwrite(pd, 4, tokens, out);
    put_f32s(xd, (size_t)hd * heads * tokens);
    put_f32s(y->data, (size_t)hd * heads * tokens);
    count++;
    ggml_free(ctx);
}

static void swiglu_case(uint32_t n, uint32_t rows, float scale) {
    struct ggml_context *ctx = new_ctx();
    struct ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, rows);
    struct ggml_tensor *g = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, rows);
    float *xd = x->data, *gd = g->data;
    for (uint32_t i = 0; i < n * rows; i++) {
        xd[i] = unit() * scale;
        gd[i] = unit() * 3.0f;
    }
    struct ggml_tensor *y = ggml_swiglu_split(ctx, x, g);
    compute(ctx, y);
    put_u32(3);
    put_u32(n);
    put_u32(rows);
    put_f32s(xd, (size_t)n * rows);
    put_f32s(gd, (size_t)n * rows);
    put_f32s(y->data, (size_t)n * rows);
    count++;
    ggml_free(ctx);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT.bin\n", argv[0]);
        return 2;
    }
    ggml_cpu_init();
    out = fopen(argv[1], "wb");
    if (!out) {
        perror(argv[1]);
        return 1;
    }
    fwrite("FGO1", 1, 4, out);
    put_u32(0);
    uint32_t rms_n[] = {1, 7, 16, 17, 100, 576, 960};
    for (size_t i = 0; i < sizeof rms_n / sizeof rms_n[0]; i++) {
        rms_case(rms_n[i], 3, 1.0f, 1e-5f);
        rms_case(rms_n[i], 2, 30.0f, 1e-6f);
    }
    rope_case(64, 9, 40, 100000.0f, 8192);
    rope_case(64, 3, 40, 10000.0f, 8192);
    rope_case(128, 4, 20, 500000.0f, 131072);
    rope_case(32, 2, 20, 10000.0f, 4096);
    rope_case(6, 1, 10, 10000.0f, 100);
    uint32_t sw_n[] = {1, 15, 16, 17, 37, 100, 1536};
    for (size_t i = 0; i < sizeof sw_n / sizeof sw_n[0]; i++) {
        swiglu_case(sw_n[i], 2, 4.0f);
        swiglu_case(sw_n[i], 2, 150.0f);
    }
    fseek(out, 4, SEEK_SET);
    put_u32(count);
    fclose(out);
    printf("%u cases\n", count);
    return 0;
}
