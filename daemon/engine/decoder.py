"""Whisper's text decoding, rewritten for speed at small batch sizes on a CPU.

openai-whisper's `DecodingTask` spends most of a token's time on overhead, not arithmetic:
its key/value cache grows by `torch.cat` through forward hooks, it computes logits for every
prompt position, and it runs each beam's attention over the audio and the prompt separately.
This decoder keeps the same rules — prompt layout, and (search.py) suppressed tokens, timestamp
rules, temperature sampling, beam search with whisper's ranking — so it picks the same tokens, with:

- the cross-attention keys and values computed once per window, in the model's format (bf16
  reads half the bytes of fp32: a step is bound by what it reads), softmax in fp32;
- a preallocated self-attention cache, one tensor for all layers, the prompt's part held once
  for all the beams of a window;
- logits only for the positions that are read, through the int8 output projection when the
  model has one (`precision.Int8Embedding`), and int8 products for most projections under an
  int8 decoder (`precision.Int8Linear`);
- beams of one window attending to its audio and its prompt in one matrix product.

In fp32 it picks the same tokens as `DecodingTask` (tests/test_decoder.py). tiny.en with 2 beams
on a 2-core CPU: 5.8 ms a token with the resident bf16 model, against 24.8 ms for `DecodingTask`
in fp32, its only CPU format (bench/decoder_speed.py). The weights are the model's own, in
whatever precision they are resident.
"""

from __future__ import annotations

import unicodedata
import weakref
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.decoding import DecodingResult
from whisper.model import MultiHeadAttention, ResidualAttentionBlock, TextDecoder, Whisper
from whisper.tokenizer import Tokenizer
from whisper.utils import compression_ratio

from daemon.engine.precision import Int8Embedding, Int8Linear
from daemon.engine.search import BeamSearch, Sampling, TokenRules


def _by_head(x: Tensor, n_head: int) -> Tensor:
    """(batch, positions, state) → (batch, heads, positions, state per head)."""
    batch, positions, _ = x.shape
    return x.view(batch, positions, n_head, -1).transpose(1, 2)


def _heads(x: Tensor, n_head: int) -> Tensor:
    """_by_head, in fp32."""
    return _by_head(x, n_head).float()


def _merge(x: Tensor, dtype: torch.dtype) -> Tensor:
    batch, _, positions, _ = x.shape
    return x.transpose(1, 2).reshape(batch, positions, -1).to(dtype)


def _norm(x: Tensor, ln: torch.nn.LayerNorm) -> Tensor:
    # whisper's LayerNorm: computed in fp32 whatever the weights' format
    return F.layer_norm(x.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps).to(x.dtype)


def _project(x: Tensor, linear: torch.nn.Linear | Int8Linear) -> Tensor:
    if isinstance(linear, Int8Linear):
        return linear.forward(x)
    # F.linear on the parameters directly: a module call costs as much as a small product here.
    # Under an int8 decoder the states are fp32 and the MLP's second projection is in the model's format.
    weight = linear.weight
    if x.dtype == weight.dtype:
        return F.linear(x, weight, linear.bias)
    return F.linear(x.to(weight.dtype), weight, linear.bias).to(x.dtype)


class _TextCache:
    """Keys and values of the text so far, every layer in one tensor: (layer, k|v, row, position, state).

    One tensor, so that reordering the rows after a beam step is one copy, not two per layer. The
    beams of a window start from one prompt: after `share`, its positions are held once per window
    (`prompt`), and each row holds only its own positions after them. A step then reads the prompt
    once for all beams (up to 223 positions against a few dozen of their own), and reordering the
    beams copies only what they do not share."""

    def __init__(self, layers: int, rows: int, n_ctx: int, state: int, device: torch.device) -> None:
        self.kv = torch.empty(layers, 2, rows, n_ctx, state, device=device)
        self.prompt: Tensor | None = None  # (layer, k|v, window, position, state)
        self.shared = 0  # positions held in `prompt`

    def share(self, group: int, length: int) -> None:
        """Each row (one per window) becomes `group` rows sharing its first `length` positions."""
        layers, _, windows, n_ctx, state = self.kv.shape
        self.prompt = self.kv[:, :, :, :length].clone()
        self.shared = length
        self.kv = self.kv.new_empty(layers, 2, windows * group, n_ctx - length, state)

    def keep(self, rows: Tensor, length: int) -> None:
        """Keep the rows `rows` (indices into the current rows), in that order."""
        own = length - self.shared
        if len(rows) != self.kv.shape[2]:
            self.kv = self.kv[:, :, rows]
        else:
            self.kv[:, :, :, :own] = self.kv[:, :, rows, :own]


class _Layer:
    """One decoder block with the window's audio keys/values and its share of the text cache."""

    def __init__(self, block: ResidualAttentionBlock, index: int, audio_kv: tuple[Tensor, Tensor],
                 text: _TextCache) -> None:
        self.block = block
        self.index = index
        self.text = text
        cross = block.cross_attn
        assert cross is not None and block.cross_attn_ln is not None
        self.cross: MultiHeadAttention = cross
        self.cross_ln: torch.nn.LayerNorm = block.cross_attn_ln
        self.fc1, self.fc2 = block.mlp[0], block.mlp[2]
        self.n_head = block.attn.n_head
        self.audio_kt, self.audio_v = audio_kv  # by head, keys transposed (Decoder._layers)
        self.recorded_heads: list[int] = []  # word timing: keep these heads' attention logits
        self.recorded: Tensor | None = None  # (rows, heads, positions, audio positions)

    def forward(self, x: Tensor, start: int, group: int) -> Tensor:
        """Run `x` (rows, positions, state) at positions start…; rows are `group` per window."""
        b = self.block
        attn = b.attn
        end = start + x.shape[1]
        h = _norm(x, b.attn_ln)
        shared = self.text.shared
        cache_k, cache_v = self.text.kv[self.index]
        cache_k[:, start - shared:end - shared] = _project(h, attn.key)
        cache_v[:, start - shared:end - shared] = _project(h, attn.value)
        q = _heads(_project(h, attn.query), self.n_head)
        k = _heads(cache_k[:, :end - shared], self.n_head)
        v = _heads(cache_v[:, :end - shared], self.n_head)
        if shared:
            out = self._after_prompt(q, k, v)
        elif x.shape[1] == 1 or start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=x.shape[1] > 1)
        else:  # several positions after cached ones: each sees the cache and the positions up to itself
            mask = torch.ones(x.shape[1], end, dtype=torch.bool, device=x.device).tril(start)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + _project(_merge(out, x.dtype), attn.out)
        x = x + self._cross(_norm(x, self.cross_ln), group)
        return x + _project(F.gelu(_project(_norm(x, b.mlp_ln), self.fc1)), self.fc2)

    def _after_prompt(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """One step's self-attention (q: rows, heads, 1, state per head) over the window's shared
        prompt and each row's own keys `k` and values `v`: one softmax over both, as over one cache."""
        assert self.text.prompt is not None
        prompt_k, prompt_v = (_heads(t, self.n_head) for t in self.text.prompt[self.index])
        windows, heads, length, _ = prompt_k.shape
        rows = q.shape[0]
        group = rows // windows

        def by_window(t: Tensor) -> Tensor:  # (rows, heads, 1, n) → (windows, heads, group, n)
            return t.reshape(windows, group, heads, -1).transpose(1, 2)

        def by_row(t: Tensor) -> Tensor:  # the other way round
            return t.transpose(1, 2).reshape(rows, heads, 1, -1)

        logits = torch.cat([by_row(by_window(q) @ prompt_k.transpose(-1, -2)), q @ k.transpose(-1, -2)], dim=-1)
        weights = (logits * q.shape[-1] ** -0.5).softmax(-1)
        return by_row(by_window(weights[..., :length]) @ prompt_v) + weights[..., length:] @ v

    def _cross(self, h: Tensor, group: int) -> Tensor:
        # All rows of one window share its audio: fold them into the query axis of one product.
        # The products run in the audio keys' format (bf16 reads half the bytes of fp32, and this
        # is the step's largest read), the softmax in fp32.
        rows, positions, state = h.shape
        windows = rows // group
        q = _project(h, self.cross.query).view(windows, group * positions, self.n_head, -1).transpose(1, 2)
        logits = (q.to(self.audio_kt.dtype) @ self.audio_kt).float() * q.shape[-1] ** -0.5
        if self.recorded_heads:
            self.recorded = logits[:, self.recorded_heads]
        out = logits.softmax(-1).to(self.audio_v.dtype) @ self.audio_v
        out = out.transpose(1, 2).reshape(rows, positions, state).to(h.dtype)
        return _project(out, self.cross.out)


class Decoder:
    """Decodes windows of one model and tokenizer; `run` mirrors whisper's `DecodingTask.run`.
    `text`: the model's decoder in another format (precision.text_decoder), instead of its own."""

    def __init__(self, model: Whisper, tokenizer: Tokenizer, text: TextDecoder | None = None) -> None:
        self.model = model
        self.text = text or model.decoder
        self.tokenizer = tokenizer
        self.n_ctx = model.dims.n_text_ctx
        self.sample_len = self.n_ctx // 2
        self.rules = TokenRules(model, tokenizer)
        self._audio: weakref.ref[Tensor] | None = None  # the encoded audio of _audio_kv
        self._audio_kv: list[tuple[Tensor, Tensor]] = []

    def initial_tokens(self, prompt: Sequence[int]) -> list[int]:
        sot = list(self.tokenizer.sot_sequence)
        if not prompt:
            return sot
        return [self.tokenizer.sot_prev, *prompt[-(self.n_ctx // 2 - 1):], *sot]

    @torch.inference_mode()
    def run(self, audio: Tensor, prompt: Sequence[int], temperature: float = 0.0,
            beam_size: int | None = None) -> list[DecodingResult]:
        """Decode each window of encoded `audio` (windows, positions, state), all with `prompt`."""
        t = self.tokenizer
        windows = audio.shape[0]
        if beam_size == 1:
            beam_size = None  # one beam is greedy decoding
        group = beam_size or 1
        initial = self.initial_tokens(prompt)
        begin = len(initial)
        sot_index = initial.index(t.sot)
        device = audio.device
        cache, layers = self._layers(audio, windows, self.n_ctx)

        # The prompt is the same for every row of a window: run it once per window.
        tokens = torch.tensor([initial] * windows, device=device)
        hidden = self._hidden(tokens, layers, 0, 1)
        logits = self._logits(hidden[:, [sot_index, -1]])
        no_speech = logits[:, 0].softmax(-1)[:, t.no_speech].tolist() if t.no_speech is not None else [np.nan] * windows
        logits = logits[:, 1]
        if group > 1:
            tokens = tokens.repeat_interleave(group, 0)
            logits = logits.repeat_interleave(group, 0)
            cache.share(group, begin)

        search = BeamSearch(group, t.eot) if beam_size else Sampling(temperature, t.eot)
        sum_logprobs = torch.zeros(len(tokens), device=device)
        for _ in range(self.sample_len):
            self.rules.apply(logits, tokens, begin)
            tokens, rows, done = search.update(tokens, logits, sum_logprobs)
            if done or tokens.shape[1] > self.n_ctx:
                break
            if rows is not None:
                cache.keep(rows, tokens.shape[1] - 1)
            position = tokens.shape[1] - 1
            logits = self._logits(self._hidden(tokens[:, -1:], layers, position, group)[:, -1])

        candidates, scores = search.finish(tokens, sum_logprobs, windows)
        results = []
        for i in range(windows):
            sampled = [c[begin:c.index(t.eot, begin)] for c in candidates[i]]
            # whisper's ranking: sum of log-probabilities over length
            best = int(np.argmax([s / len(c) if c else -np.inf for c, s in zip(sampled, scores[i])]))
            text = t.decode(sampled[best]).strip()
            results.append(DecodingResult(
                audio_features=audio[i], language=t.language or "en", tokens=sampled[best], text=text,
                avg_logprob=scores[i][best] / (len(sampled[best]) + 1), no_speech_prob=no_speech[i],
                temperature=temperature, compression_ratio=compression_ratio(text)))
        return results

    @torch.inference_mode()
    def punctuate(self, audio: Tensor, prompt: Sequence[int], tokens: Sequence[int],
                  marks: Sequence[Sequence[int]]) -> list[int]:
        """`tokens`, one window's decoded text (timestamps included), with punctuation marks put
        where the model, given `prompt` (a punctuated style sample), finds them likely. Only marks
        are added, so the words stay those of the decoding that produced `tokens`. `marks`: each
        mark's tokens (a full-width comma is three byte tokens).

        A mark is tried after a whole letter or digit when the likeliest first token of a mark is
        likelier there than the token that follows (than any timestamp, where a timestamp
        follows); the rest of its tokens are the model's choice among the marks. It stays when the
        text with it is likelier than without: P(mark) P(next | mark) > P(next), so that a mark
        never splits a word or a phrase. The text after the last mark kept runs through the model
        as one sequence: a pass per mark, not one per token.
        """
        t = self.tokenizer
        following: dict[tuple[int, ...], list[int]] = {}
        for mark in marks:
            for i in range(len(mark)):
                following.setdefault(tuple(mark[:i]), []).append(mark[i])
        firsts = sorted(set(following[()]))
        longest = max(len(mark) for mark in marks)
        initial = self.initial_tokens(prompt)
        sequence = [*initial, *tokens]
        device = audio.device
        _, layers = self._layers(audio, 1, self.n_ctx)

        def run(start: int, pieces: Sequence[int]) -> Tensor:
            """Hidden states of `pieces` put at positions start…; the positions before are cached."""
            return self._hidden(torch.tensor([list(pieces)], device=device), layers, start, 1)[0]

        def logprob(logprobs: Tensor, token: int) -> float:
            """Of `token` next; of any timestamp, for a timestamp (whisper's own rule for choosing one)."""
            return float(logprobs[t.timestamp_begin:].logsumexp(-1) if token >= t.timestamp_begin else logprobs[token])

        valid = 0  # positions of `sequence` whose keys and values are cached
        while len(sequence) + longest <= self.n_ctx:
            start = valid
            hidden = run(start, sequence[start:])
            valid = len(sequence)
            # position q predicts q + 1; a mark may go between them when q ends a letter or digit
            candidates = [q for q in range(max(start, len(initial)), len(sequence) - 1)
                          if sequence[q] < t.eot and _ends_word(t.decode(sequence[max(0, q - 3):q + 1]))]
            if not candidates:
                break
            logprobs = F.log_softmax(self._logits(hidden[[q - start for q in candidates]]), -1)
            for row, q in enumerate(candidates):
                at, without = q + 1, logprob(logprobs[row], sequence[q + 1])
                first = firsts[int(logprobs[row, firsts].argmax())]
                if float(logprobs[row, first]) <= without:
                    continue
                if valid < at:  # an earlier try overwrote the cache from there
                    run(valid, sequence[valid:at])
                mark, score = [first], float(logprobs[row, first])
                while True:
                    after = F.log_softmax(self._logits(run(at + len(mark) - 1, mark[-1:])), -1)[0]
                    options = following.get(tuple(mark))
                    if options is None:
                        break
                    mark.append(options[int(after[options].argmax())])
                    score += float(after[mark[-1]])
                valid = at + len(mark)
                if score + logprob(after, sequence[at]) > without:
                    sequence[at:at] = mark
                    break
                valid = at  # the mark's keys and values took the text's places
            else:
                break
        return sequence[len(initial):]

    @torch.inference_mode()
    def attention(self, audio: Tensor, tokens: Sequence[int], heads: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """What word timing (timing.py) reads of `tokens`, run as a sequence of their own over one
        encoded window: the cross-attention logits of `heads` (layer, head), as (head, token, audio
        position) in the order given, and each position's logits for the next token."""
        _, layers = self._layers(audio, 1, len(tokens))
        for layer in layers:
            layer.recorded_heads = [h for i, h in heads if i == layer.index]
        hidden = self._hidden(torch.tensor([list(tokens)], device=audio.device), layers, 0, 1)
        recorded = {(layer.index, h): layer.recorded[0, k]  # type: ignore[index]
                    for layer in layers for k, h in enumerate(layer.recorded_heads)}
        return torch.stack([recorded[head] for head in heads]), self._logits(hidden[0])

    @torch.inference_mode()  # no autograd graph, which would hold the audio and keep it alive
    def _layers(self, audio: Tensor, rows: int, positions: int) -> tuple[_TextCache, list[_Layer]]:
        """The decoder's blocks over encoded `audio`, with a new text cache of `rows` × `positions`.

        The audio's keys and values are computed once for every pass over the same encoding (the
        decoding at each fallback temperature, the punctuation pass, word timing), and let go
        with it: nothing stays resident between windows or while the worker is idle."""
        if self._audio is None or self._audio() is not audio:
            def forget(_: weakref.ref[Tensor]) -> None:
                self._audio_kv = []

            self._audio = weakref.ref(audio, forget)
            self._audio_kv = [
                (_by_head(_project(audio, b.cross_attn.key), b.attn.n_head).transpose(-1, -2).contiguous(),
                 _by_head(_project(audio, b.cross_attn.value), b.attn.n_head).contiguous())
                for b in self.text.blocks]
        blocks = self.text.blocks
        cache = _TextCache(len(blocks), rows, positions, audio.shape[-1], audio.device)
        return cache, [_Layer(block, i, kv, cache) for i, (block, kv) in enumerate(zip(blocks, self._audio_kv))]

    def _hidden(self, tokens: Tensor, layers: list[_Layer], start: int, group: int) -> Tensor:
        d = self.text
        x = d.token_embedding(tokens) + d.positional_embedding[start:start + tokens.shape[1]]
        for layer in layers:
            x = layer.forward(x, start, group)
        return _norm(x, d.ln)

    def _logits(self, hidden: Tensor) -> Tensor:
        embedding = self.text.token_embedding
        if isinstance(embedding, Int8Embedding):
            return embedding.logits(hidden)
        return F.linear(hidden, embedding.weight).float()


def _ends_word(text: str) -> bool:
    """Whether `text` ends with a whole letter or digit (not a mark, a space or part of a character)."""
    return bool(text) and unicodedata.category(text[-1])[0] in "LN"
