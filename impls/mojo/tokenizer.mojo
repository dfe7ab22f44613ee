# The tokenizer: byte-pair encoding with sentencepiece's dummy prefix and byte
# fallback, and decoding with run.c's rules (the space dropped after BOS, <0xHH>
# pieces, safe_printf's filter).

from std.collections import List
from model import BPtr, ByteTable, Vocab

# llama2.c's ids; a GGUF may state others (tokenizer.ggml.bos_token_id, eos_token_id)
comptime BOS = 1
comptime EOS = 2


struct Tokenizer(Movable):
    var vocab: Vocab
    var lookup: ByteTable  # piece bytes -> lowest id with those bytes
    var bos_id: Int
    var eos_id: Int

    def __init__(out self, var vocab: Vocab, bos_id: Int = BOS, eos_id: Int = EOS):
        self.vocab = vocab^
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.lookup = ByteTable(self.vocab.size())
        var base = self.vocab.bytes.unsafe_ptr()
        for i in range(self.vocab.size()):
            var off = self.vocab.offsets[i]
            # ids ascend, so a duplicated piece keeps its lower id
            self.lookup.insert(BPtr(unsafe_from_address=Int(base) + off),
                               self.vocab.offsets[i + 1] - off, i, False)

    def piece_ptr(self, id: Int) -> BPtr:
        return BPtr(unsafe_from_address=Int(self.vocab.bytes.unsafe_ptr()) + self.vocab.offsets[id])

    def piece_len(self, id: Int) -> Int:
        return self.vocab.offsets[id + 1] - self.vocab.offsets[id]

    def find(self, p: BPtr, n: Int) -> Int:
        return self.lookup.find(p, n)

    def byte_token(self, b: UInt8) -> Int:
        """The byte-fallback id <0xHH> (3 + byte); <unk> in a vocabulary too small to
        have byte tokens, where run.c would index out of bounds."""
        var id = Int(b) + 3
        return id if id < self.vocab.size() else 0

    def encode(self, text: List[UInt8], bos: Bool, eos: Bool) -> List[Int]:
        var tokens = List[Int]()
        if bos:
            tokens.append(self.bos_id)
        var n = len(text)
        var tp = BPtr(unsafe_from_address=Int(text.unsafe_ptr()))
        if n > 0:
            # the dummy prefix: sentencepiece's add_dummy_prefix
            var space = List[UInt8](length=1, fill=32)
            var sid = self.find(BPtr(unsafe_from_address=Int(space.unsafe_ptr())), 1)
            _ = space^
            tokens.append(sid if sid >= 0 else self.byte_token(32))
        # UTF-8 code point groups: a piece if the vocabulary has one, else bytes
        var i = 0
        while i < n:
            var j = i + 1
            while j < n and (Int(text[j]) & 0xC0) == 0x80 and j - i < 4:
                j += 1
            var id = self.find(tp.unsafe_offset(i), j - i)
            if id >= 0:
                tokens.append(id)
            else:
                for b in range(i, j):
                    tokens.append(self.byte_token(text[b]))
            i = j
        self.merge(tokens)
        if eos:
            tokens.append(self.eos_id)
        return tokens^

    def merge(self, mut tokens: List[Int]):
        """Merge the best-scoring adjacent pair until none is in the vocabulary."""
        var buf = List[UInt8](length=2 * self.vocab.max_token_length + 2, fill=0)
        var bp = BPtr(unsafe_from_address=Int(buf.unsafe_ptr()))
        while True:
            var best_score = Float32.MIN
            var best_id = -1
            var best_i = -1
            for i in range(len(tokens) - 1):
                var la = self.piece_len(tokens[i])
                var lb = self.piece_len(tokens[i + 1])
                if la + lb > len(buf):
                    continue  # longer than any piece
                var pa = self.piece_ptr(tokens[i])
                var pb = self.piece_ptr(tokens[i + 1])
                for j in range(la):
                    bp.unsafe_store(j, pa.unsafe_load(j))
                for j in range(lb):
                    bp.unsafe_store(la + j, pb.unsafe_load(j))
                var id = self.find(bp, la + lb)
                if id >= 0 and (best_i < 0 or self.vocab.scores[id] > best_score):
                    best_score = self.vocab.scores[id]
                    best_id = id
                    best_i = i
            if best_i < 0:
                _ = buf^
                return
            tokens[best_i] = best_id
            _ = tokens.pop(best_i + 1)

    def decode(self, prev: Int, token: Int) -> List[UInt8]:
        """The bytes to print for `token` after `prev`."""
        var p = self.piece_ptr(token)
        var n = self.piece_len(token)
        # after BOS, sentencepiece drops the leading space of a piece
        if prev == self.bos_id and n > 0 and p.unsafe_load(0) == 32:
            p = p.unsafe_offset(1)
            n -= 1
        var out = List[UInt8]()
        # a raw byte token <0xHH>
        if n == 6 and p.unsafe_load(0) == 60 and p.unsafe_load(1) == 48 and p.unsafe_load(2) == 120 and p.unsafe_load(5) == 62:
            var hi = hex_digit(p.unsafe_load(3))
            var lo = hex_digit(p.unsafe_load(4))
            if hi >= 0 and lo >= 0:
                out.append(UInt8(hi * 16 + lo))
                return out^
        for i in range(n):
            out.append(p.unsafe_load(i))
        return out^


def hex_digit(b: UInt8) -> Int:
    if b >= 48 and b <= 57:
        return Int(b) - 48
    if b >= 65 and b <= 70:
        return Int(b) - 55
    if b >= 97 and b <= 102:
        return Int(b) - 87
    return -1


def safe_piece(piece: List[UInt8]) -> Bool:
    """run.c's safe_printf: skip empty pieces and lone unprintable bytes."""
    if len(piece) == 0:
        return False
    if len(piece) == 1:
        var b = piece[0]
        var printable = b >= 0x20 and b <= 0x7E
        var space = b == 9 or b == 10 or b == 11 or b == 12 or b == 13
        return printable or space
    return True
