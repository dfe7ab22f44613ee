package polyllama;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static polyllama.Fixtures.golden;
import static polyllama.Fixtures.modelFile;
import static polyllama.Fixtures.utf8;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

/** Greedy stories260K through the whole pipeline prints the golden texts (tests/data/golden/). */
class GenerationTest {
    private static String greedy(Model m, Tokenizer tok, int threads, String prompt, int steps) throws IOException {
        return greedy(m, tok, threads, 512, prompt, steps);
    }

    private static String greedy(Model m, Tokenizer tok, int threads, int batch, String prompt, int steps) throws IOException {
        Transformer t = new Transformer(m, new Pool(threads), Kernels.pick(), batch);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Generation.generate(t, tok, new Sampler(0f, 0.9f, 1), utf8(prompt), steps, false, out);
        return out.toString(StandardCharsets.UTF_8);
    }

    @Test
    void stories260KGreedyIsTheGoldenText() throws IOException {
        Model m = Model.read(modelFile("stories260K.bin"));
        Tokenizer tok = Tokenizer.read(modelFile("tok512.bin"), m.config.vocabSize);
        for (int threads : new int[] {1, 2}) {
            assertEquals(golden("stories260K.f32.greedy.txt"), greedy(m, tok, threads, "", 256), "-j " + threads);
            assertEquals(golden("stories260K.f32.prompt.txt"),
                    greedy(m, tok, threads, "Once upon a time, there was a", 96), "-j " + threads);
        }
        for (int batch : new int[] {1, 3, 7}) {  // the prompt's 10 positions in batches of every kind
            assertEquals(golden("stories260K.f32.prompt.txt"),
                    greedy(m, tok, 2, batch, "Once upon a time, there was a", 96), "-b " + batch);
        }
    }
}
