package polyllama;

import static polyllama.Fixtures.DIM;
import static polyllama.Fixtures.HEADS;
import static polyllama.Fixtures.HIDDEN;
import static polyllama.Fixtures.KV_HEADS;
import static polyllama.Fixtures.LAYERS;
import static polyllama.Fixtures.SEQ;
import static polyllama.Fixtures.VOCAB;
import static polyllama.Fixtures.le;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.function.Predicate;
import java.util.function.ToIntFunction;

/**
 * A GGUF file as lists a test can change before writing it: kv entries (key, type, raw value)
 * and tensor infos (name, dims, type, offset), the data blob and the alignment.
 */
final class GgufFile {
    static final int U32 = 4, F32 = 6, STRING = 8, ARRAY = 9, I32 = 5;  // kv value types

    record Kv(String key, int type, byte[] value) {}

    record Tensor(String name, long[] dims, int type, long offset) {}

    final List<Kv> kvs = new ArrayList<>();
    final List<Tensor> tensors = new ArrayList<>();
    byte[] data = new byte[0];
    final int alignment = 32;
    private ToIntFunction<String> typeOf = name -> 0;  // the ggml type add() writes each matrix in

    // ------------------------------------------------------------------------ the tiny model

    /** The tiny model of Fixtures with its tokenizer, as llama.cpp's tools lay it out. */
    static GgufFile tinyModel(boolean sharedClassifier) {
        return model(DIM, HIDDEN, sharedClassifier, name -> false);
    }

    /**
     * The tiny model with other widths (the heads and the rest as Fixtures), the matrices q8
     * names written as Q8_0 (their rows must be a multiple of 32 long), the rest F32.
     */
    static GgufFile model(int dim, int hidden, boolean sharedClassifier, Predicate<String> q8) {
        return typed(dim, hidden, sharedClassifier, name -> q8.test(name) ? Q8.TYPE : 0);
    }

    /** The same with each matrix in the ggml type typeOf gives it: 0 (F32), 1 (F16), 8 (Q8_0) or 30 (BF16). */
    static GgufFile typed(int dim, int hidden, boolean sharedClassifier, ToIntFunction<String> typeOf) {
        GgufFile g = new GgufFile();
        g.typeOf = typeOf;
        g.kv("general.architecture", STRING, string("llama"));
        g.kv("general.name", STRING, string("tiny"));
        g.kv("llama.context_length", U32, u32(SEQ));
        g.kv("llama.embedding_length", U32, u32(dim));
        g.kv("llama.block_count", U32, u32(LAYERS));
        g.kv("llama.feed_forward_length", U32, u32(hidden));
        g.kv("llama.attention.head_count", U32, u32(HEADS));
        g.kv("llama.attention.head_count_kv", U32, u32(KV_HEADS));
        g.kv("tokenizer.ggml.model", STRING, string("llama"));
        g.kv("tokenizer.ggml.tokens", ARRAY, stringArray(tokens(Fixtures.pieces())));
        g.kv("tokenizer.ggml.scores", ARRAY, f32Array(Fixtures.scores()));
        int[] types = new int[VOCAB];
        Arrays.fill(types, 1);
        types[0] = 2;
        types[1] = 3;
        types[2] = 3;
        for (int b = 0; b < 256; b++) types[3 + b] = 6;
        g.kv("tokenizer.ggml.token_type", ARRAY, i32Array(types));
        int kvDim = dim / HEADS * KV_HEADS, seed = 0;
        g.add("token_embd.weight", seed++, VOCAB, dim);
        for (int l = 0; l < LAYERS; l++) {
            String b = "blk." + l + ".";
            g.add(b + "attn_norm.weight", seed++, dim);
            g.add(b + "attn_q.weight", seed++, dim, dim);
            g.add(b + "attn_k.weight", seed++, kvDim, dim);
            g.add(b + "attn_v.weight", seed++, kvDim, dim);
            g.add(b + "attn_output.weight", seed++, dim, dim);
            g.add(b + "ffn_norm.weight", seed++, dim);
            g.add(b + "ffn_gate.weight", seed++, hidden, dim);
            g.add(b + "ffn_down.weight", seed++, dim, hidden);
            g.add(b + "ffn_up.weight", seed++, hidden, dim);
        }
        g.add("output_norm.weight", seed++, dim);
        if (!sharedClassifier) g.add("output.weight", seed, VOCAB, dim);
        return g;
    }

    /** GGUF spells a space U+2581 and BOS/EOS as <s> and </s>. */
    static byte[][] tokens(byte[][] pieces) {
        byte[][] out = new byte[pieces.length][];
        for (int i = 0; i < pieces.length; i++) {
            String s = new String(pieces[i], StandardCharsets.UTF_8).replace(" ", "\u2581");
            out[i] = (i == 1 ? "<s>" : i == 2 ? "</s>" : s).getBytes(StandardCharsets.UTF_8);
        }
        return out;
    }

    // ------------------------------------------------------------------------------ editing

    void kv(String key, int type, byte[] value) {
        kvs.add(new Kv(key, type, value));
    }

    Kv kv(String key) {
        return kvs.stream().filter(k -> k.key().equals(key)).findFirst().orElseThrow();
    }

    void replaceKv(String key, Kv with) {
        kvs.replaceAll(k -> k.key().equals(key) ? with : k);
    }

    /** A tensor of shape (rows, cols) or (n), appended to the data at the next aligned offset. */
    void add(String name, int seed, int... shape) {
        int n = 1;
        for (int s : shape) n *= s;
        long[] dims = new long[shape.length];
        for (int i = 0; i < shape.length; i++) dims[i] = shape[shape.length - 1 - i];
        float[] values = Fixtures.tensor(seed, n);
        int type = shape.length == 2 ? typeOf.applyAsInt(name) : 0;
        byte[] bytes = type == Q8.TYPE ? Fixtures.q8(values) : Matrix.half(type) ? Fixtures.halfs(values, type) : Fixtures.floats(values);
        tensors.add(new Tensor(name, dims, type, appendData(bytes)));
    }

    /** Appends bytes at the next aligned offset of the data blob; that offset. */
    long appendData(byte[] bytes) {
        int at = (data.length + alignment - 1) / alignment * alignment;
        byte[] grown = Arrays.copyOf(data, at + bytes.length);
        System.arraycopy(bytes, 0, grown, at, bytes.length);
        data = grown;
        return at;
    }

    Tensor tensor(int i) {
        return tensors.get(i);
    }

    void setOffset(int i, long offset) {
        Tensor t = tensors.get(i);
        tensors.set(i, new Tensor(t.name(), t.dims(), t.type(), offset));
    }

    /** Another type in tensor i's info, its data left as it is. */
    void setType(int i, int type) {
        Tensor t = tensors.get(i);
        tensors.set(i, new Tensor(t.name(), t.dims(), type, t.offset()));
    }

    // ------------------------------------------------------------------------------ writing

    byte[] bytes() throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(le(24).putInt(Gguf.MAGIC).putInt(3).putLong(tensors.size()).putLong(kvs.size()).array());
        for (Kv k : kvs) {
            out.write(string(k.key()));
            out.write(u32(k.type()));
            out.write(k.value());
        }
        for (Tensor t : tensors) {
            out.write(string(t.name()));
            out.write(u32(t.dims().length));
            for (long d : t.dims()) out.write(le(8).putLong(d).array());
            out.write(u32(t.type()));
            out.write(le(8).putLong(t.offset()).array());
        }
        while (out.size() % alignment != 0) out.write(0);
        out.write(data);
        return out.toByteArray();
    }

    Path write(Path dir, String name) throws IOException {
        return Files.write(dir.resolve(name), bytes());
    }

    // ------------------------------------------------------------------------ value encoding

    static byte[] u32(int v) {
        return le(4).putInt(v).array();
    }

    static byte[] string(String s) {
        return string(s.getBytes(StandardCharsets.UTF_8));
    }

    static byte[] string(byte[] b) {
        byte[] out = le(8 + b.length).putLong(b.length).array();
        System.arraycopy(b, 0, out, 8, b.length);
        return out;
    }

    static byte[] stringArray(byte[][] items) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.writeBytes(le(12).putInt(STRING).putLong(items.length).array());
        for (byte[] it : items) out.writeBytes(string(it));
        return out.toByteArray();
    }

    static byte[] f32Array(float[] v) {
        var bb = le(12 + 4 * v.length).putInt(F32).putLong(v.length);
        for (float f : v) bb.putFloat(f);
        return bb.array();
    }

    static byte[] i32Array(int[] v) {
        var bb = le(12 + 4 * v.length).putInt(I32).putLong(v.length);
        for (int x : v) bb.putInt(x);
        return bb.array();
    }
}
