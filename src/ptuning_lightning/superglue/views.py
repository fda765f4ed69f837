"""Score answer words of any length with one template, for causal and masked LMs.

An example is scored by comparing its candidates (label words, COPA alternatives, ReCoRD
entities): each candidate's score is the summed (or averaged) log-probability of its tokens.

- Causal LM: the text up to ``[Y]``, then the candidate's tokens; token i is read at the
  position before it. Candidates that share all but their last token share one sequence, so
  single-token label words need one forward pass for all labels.
- Masked LM: ``[Y]`` becomes as many masks as the candidate has tokens; each token is read at
  its mask (PET's parallel scoring). Candidates of the same length share one sequence.

With ``in_input`` (fine-tuning's multiple-choice head: COPA, ReCoRD) each candidate is written
into ``[Y]`` whole, one sequence per candidate, and one position is read: a causal LM's last
candidate token (the first to have seen all of it), a masked LM's first token ([CLS], <s>).
"""

from __future__ import annotations

from dataclasses import dataclass

from ptuning_lightning.prompting.templates import TemplateTokenizer


@dataclass
class Views:
    """The sequences of one example and, per candidate, where its tokens are read."""

    sequences: list[dict]  # input_ids, prompt_index
    candidates: list[tuple[int, list[int], list[int]]]  # (sequence, positions, token ids)
    truncated: bool = False


def candidate_views(
    tokenizer: TemplateTokenizer,
    inputs: dict[str, str],
    candidates: list[str],
    in_input: bool = False,
) -> Views:
    """The sequences that score every candidate of one example (see the module docstring)."""
    tokens = [tokenizer.answer_ids(c) for c in candidates]
    if not all(tokens):
        raise ValueError(f"a candidate answer has no tokens: {candidates}")
    longest = max(map(len, tokens))
    encoded = tokenizer.encode(inputs, reserve=longest - (1 if tokenizer.kind == "masked" else 0))
    ids, prompt_index, answer = encoded.input_ids, encoded.prompt_index, encoded.answer_position
    keys: dict[tuple, int] = {}
    views = Views([], [], encoded.truncated)
    for cand in tokens:
        n = len(cand)
        if in_input:
            causal = tokenizer.kind == "causal"
            seq_ids = ids + cand if causal else ids[:answer] + cand + ids[answer + 1 :]
            seq_prompt = (
                prompt_index + [-1] * n
                if causal
                else prompt_index[:answer] + [-1] * n + prompt_index[answer + 1 :]
            )
            views.sequences.append({"input_ids": seq_ids, "prompt_index": seq_prompt})
            read = answer + n if causal else 0
            views.candidates.append((len(views.sequences) - 1, [read], cand[-1:]))
            continue
        if tokenizer.kind == "causal":
            key: tuple = tuple(cand[:-1])
            seq_ids, seq_prompt = ids + cand[:-1], prompt_index + [-1] * (n - 1)
        else:
            key = (n,)
            mask = tokenizer.tokenizer.mask_token_id
            seq_ids = ids[:answer] + [mask] * n + ids[answer + 1 :]
            seq_prompt = prompt_index[:answer] + [-1] * n + prompt_index[answer + 1 :]
        if key not in keys:
            keys[key] = len(views.sequences)
            views.sequences.append({"input_ids": seq_ids, "prompt_index": seq_prompt})
        views.candidates.append((keys[key], list(range(answer, answer + n)), cand))
    return views
