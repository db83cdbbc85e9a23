"""How the decoder (decoder.py) picks each next token: whisper's token rules and its two searches.

The rules are openai-whisper's logit filters (SuppressBlank, SuppressTokens, ApplyTimestampRules):
tokens that are never written, a first token that is a timestamp within the first second,
timestamps in pairs that never go back in time. The searches are greedy decoding (sampling at
a temperature above 0) and beam search with whisper's ranking. Each works on all the rows of a
batch at once: one per window, or one per beam.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.audio import CHUNK_LENGTH
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer

MAX_INITIAL_TIMESTAMP = 1.0  # seconds; whisper's default: the first cue starts within a second


class TokenRules:
    """whisper's logit filters for one model and tokenizer, with timestamps always on."""

    def __init__(self, model: Whisper, tokenizer: Tokenizer) -> None:
        t = tokenizer
        self.tokenizer = tokenizer
        suppress = set(t.non_speech_tokens) | {t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm}
        if t.no_speech is not None:
            suppress.add(t.no_speech)  # its probability is read separately
        if t.no_timestamps is not None:
            suppress.add(t.no_timestamps)  # timestamps are always on
        self.suppress = torch.tensor(sorted(suppress), device=model.device)
        self.blank = torch.tensor(t.encode(" ") + [t.eot], device=model.device)
        precision = CHUNK_LENGTH / model.dims.n_audio_ctx
        self.last_initial_timestamp = t.timestamp_begin + round(MAX_INITIAL_TIMESTAMP / precision)

    def apply(self, logits: Tensor, tokens: Tensor, begin: int) -> None:
        """Filter the next token's `logits` of each row of `tokens`, in place; the text starts at `begin`."""
        ts = self.tokenizer.timestamp_begin
        eot = self.tokenizer.eot
        logits[:, self.suppress] = -np.inf
        if tokens.shape[1] == begin:
            logits[:, self.blank] = -np.inf
            logits[:, :ts] = -np.inf  # the first token is a timestamp…
            logits[:, self.last_initial_timestamp + 1:] = -np.inf  # …within the first second
        else:
            for k, row in enumerate(tokens[:, begin:].tolist()):
                last = row[-1] >= ts
                penultimate = len(row) < 2 or row[-2] >= ts
                if last:
                    if penultimate:
                        logits[k, ts:] = -np.inf  # timestamps come in pairs
                    else:
                        logits[k, :eot] = -np.inf
                stamps = [s for s in row if s >= ts]
                if stamps:
                    # never back in time, and no empty segments
                    floor = stamps[-1] if last and not penultimate else stamps[-1] + 1
                    logits[k, ts:floor] = -np.inf
        # a timestamp when all timestamps together are likelier than any single text token
        logprobs = F.log_softmax(logits, dim=-1)
        timestamp = logprobs[:, ts:].logsumexp(-1)
        text = logprobs[:, :ts].max(-1).values
        logits[timestamp > text, :ts] = -np.inf


class Sampling:
    """Greedy at temperature 0, otherwise sampling; one row per window."""

    def __init__(self, temperature: float, eot: int) -> None:
        self.temperature = temperature
        self.eot = eot

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor) -> tuple[Tensor, Tensor | None, bool]:
        if self.temperature == 0:
            chosen = logits.argmax(-1)
        else:
            chosen = torch.distributions.Categorical(logits=logits / self.temperature).sample()
        logprobs = F.log_softmax(logits, dim=-1)
        ended = tokens[:, -1] == self.eot
        sum_logprobs += logprobs[torch.arange(len(chosen), device=chosen.device), chosen] * ~ended
        chosen[ended] = self.eot
        tokens = torch.cat([tokens, chosen[:, None]], dim=-1)
        return tokens, None, bool((chosen == self.eot).all())

    def finish(self, tokens: Tensor, sum_logprobs: Tensor, windows: int) -> tuple[list[list[list[int]]], list[list[float]]]:
        rows = F.pad(tokens, (0, 1), value=self.eot).tolist()
        return [[row] for row in rows], [[s] for s in sum_logprobs.tolist()]


class BeamSearch:
    """whisper's beam search (patience 1): keeps `size` live beams per window until `size` have ended."""

    def __init__(self, size: int, eot: int) -> None:
        self.size = size
        self.eot = eot
        self.finished: list[dict[tuple[int, ...], float]] | None = None

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor) -> tuple[Tensor, Tensor | None, bool]:
        windows = tokens.shape[0] // self.size
        if self.finished is None:
            self.finished = [{} for _ in range(windows)]
        logprobs = F.log_softmax(logits, dim=-1)
        top_logprobs, top_tokens = logprobs.topk(self.size + 1)
        prefixes = tokens.tolist()
        sums = sum_logprobs.tolist()
        kept: list[tuple[int, ...]] = []
        sources: list[int] = []
        for i in range(windows):
            scores: dict[tuple[int, ...], float] = {}
            origin: dict[tuple[int, ...], int] = {}
            for row in range(i * self.size, (i + 1) * self.size):
                for logprob, token in zip(top_logprobs[row].tolist(), top_tokens[row].tolist()):
                    sequence = (*prefixes[row], token)
                    scores[sequence] = sums[row] + logprob
                    origin[sequence] = row
            ended: dict[tuple[int, ...], float] = {}
            live = 0
            for sequence in sorted(scores, key=scores.__getitem__, reverse=True):
                if sequence[-1] == self.eot:
                    ended[sequence] = scores[sequence]
                    continue
                sum_logprobs[len(kept)] = scores[sequence]
                kept.append(sequence)
                sources.append(origin[sequence])
                live += 1
                if live == self.size:
                    break
            done = self.finished[i]
            for sequence in sorted(ended, key=ended.__getitem__, reverse=True):
                if len(done) >= self.size:
                    break
                done[sequence] = ended[sequence]
        complete = all(len(done) >= self.size for done in self.finished)
        reordered = torch.tensor(sources, device=tokens.device) if sources != list(range(len(sources))) else None
        return torch.tensor(kept, device=tokens.device), reordered, complete

    def finish(self, tokens: Tensor, sum_logprobs: Tensor, windows: int) -> tuple[list[list[list[int]]], list[list[float]]]:
        assert self.finished is not None
        rows = tokens.tolist()
        sums = sum_logprobs.tolist()
        for i, done in enumerate(self.finished):
            # not enough beams ended: the best live ones count as ended here
            live = range(i * self.size, (i + 1) * self.size)
            for row in sorted(live, key=sums.__getitem__, reverse=True):
                if len(done) >= self.size:
                    break
                done[(*rows[row], self.eot)] = sums[row]
        return [[list(s) for s in done] for done in self.finished], [list(done.values()) for done in self.finished]
