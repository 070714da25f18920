"""A word-level KenLM for flashlight's lexicon-free decoder, which asks its LM about every token it emits.

Letters cost nothing until ``|`` (or the end of the utterance) completes a word, which KenLM then scores in its
context, as pyctcdecode does. A word outside the LM's vocabulary also pays ``unk_penalty``, as soon as its letters
stop being the prefix of any LM word (so the beam drops such spellings early), else when it ends. Without that
penalty a word LM favours fewer words: one long unknown word costs one ``<unk>`` where the true words cost one
LM score each, and the decoder runs words together.

flashlight only knows a state by its identity, so each state's KenLM context and partial word live in a map, reset
per utterance: the states form a tree (``state.child(token)``), so equal token histories share one state and their
hypotheses merge.
"""

from flashlight.lib.text.decoder import LM, LMState
from flashlight.lib.text.decoder.kenlm import KenLM


class WordScoringLM(LM):
    def __init__(self, kenlm: KenLM, word_ids: dict[str, int], unk_id: int, letters: list[str], delimiter_id: int,
                 word_bonus: float = 0.0, unk_penalty: float = 0.0):
        """``word_ids``: the KenLM dictionary's ids of the LM's words (others score as ``unk_id``); ``letters``: what
        each token id spells in the LM's case ("" for the blank and special tokens); ``word_bonus``: added to each
        word's log10 probability, and ``unk_penalty`` to each unknown word's (flashlight weighs the sum by
        ``lm_weight``)."""
        LM.__init__(self)
        self._kenlm, self._word_ids, self._unk_id = kenlm, word_ids, unk_id
        self._letters, self._delimiter_id = letters, delimiter_id
        self._word_bonus, self._unk_penalty = word_bonus, unk_penalty
        self._prefixes = {word[:i] for word in word_ids for i in range(len(word) + 1)}
        self._states: dict[LMState, tuple[LMState, str, float]] = {}
        """state -> (KenLM context, letters of the word under way, the score of the step into the state)."""

    def start(self, start_with_nothing: bool) -> LMState:
        self._states.clear()
        state = LMState()
        self._states[state] = (self._kenlm.start(start_with_nothing), "", 0.0)
        return state

    def score(self, state: LMState, token: int) -> tuple[LMState, float]:
        child = state.child(token)
        known = self._states.get(child)
        if known is None:
            context, partial, _ = self._states[state]
            score = 0.0
            if token == self._delimiter_id:
                if partial:
                    context, score = self._score_word(context, partial)
                partial = ""
            else:
                letters = partial + self._letters[token]
                if partial in self._prefixes and letters not in self._prefixes:  # no LM word starts so
                    score = self._unk_penalty
                partial = letters
            known = self._states[child] = (context, partial, score)
        return child, known[2]

    def finish(self, state: LMState) -> tuple[LMState, float]:
        context, partial, _ = self._states[state]
        score = 0.0
        if partial:
            context, score = self._score_word(context, partial)
        _, end = self._kenlm.finish(context)
        return state.child(-1), score + end

    def _score_word(self, context: LMState, word: str) -> tuple[LMState, float]:
        """KenLM's score of a completed word, with the bonus; an unknown word pays the penalty it has not yet paid
        (one that is still a prefix of LM words)."""
        word_id = self._word_ids.get(word)
        context, score = self._kenlm.score(context, self._unk_id if word_id is None else word_id)
        if word_id is None and word in self._prefixes:
            score += self._unk_penalty
        return context, score + self._word_bonus


class PrefixLM(LM):
    """No LM, but a state per token history. With ZeroLM's single state flashlight merges hypotheses of different
    texts that end in the same token (so the beam is the best single path, and ``log_add`` would add up different
    texts); with a state per history it merges only alignments of the same text: CTC prefix beam search."""

    def start(self, start_with_nothing: bool) -> LMState:
        return LMState()

    def score(self, state: LMState, token: int) -> tuple[LMState, float]:
        return state.child(token), 0.0

    def finish(self, state: LMState) -> tuple[LMState, float]:
        return state, 0.0
