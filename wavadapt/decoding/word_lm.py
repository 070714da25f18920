"""A word-level KenLM for flashlight's lexicon-free decoder, which asks its LM about every token it emits.

Letters cost nothing until ``|`` (or the end of the utterance) completes a word, which KenLM then scores in its
context, as pyctcdecode does. flashlight only knows a state by its identity, so each state's KenLM context and
partial word live in a map, reset per utterance: the states form a tree (``state.child(token)``), so equal token
histories share one state and their hypotheses merge.
"""

from flashlight.lib.text.decoder import LM, LMState
from flashlight.lib.text.decoder.kenlm import KenLM


class WordScoringLM(LM):
    def __init__(self, kenlm: KenLM, word_ids: dict[str, int], unk_id: int, letters: list[str], delimiter_id: int,
                 word_bonus: float = 0.0):
        """``word_ids``: the KenLM dictionary's ids of the LM's words (others score as ``unk_id``); ``letters``: what
        each token id spells in the LM's case ("" for the blank and special tokens); ``word_bonus``: added to each
        word's log10 probability (flashlight weighs the sum by ``lm_weight``)."""
        LM.__init__(self)
        self._kenlm, self._word_ids, self._unk_id = kenlm, word_ids, unk_id
        self._letters, self._delimiter_id, self._word_bonus = letters, delimiter_id, word_bonus
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
            if token == self._delimiter_id and partial:
                context, score = self._score_word(context, partial)
                partial = ""
            elif token != self._delimiter_id:
                partial += self._letters[token]
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
        context, score = self._kenlm.score(context, self._word_ids.get(word, self._unk_id))
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
