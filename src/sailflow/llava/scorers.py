"""The LLaVA-1.5 benchmark metrics, as the official scorers define them (pure Python).

    VQAv2 / VizWiz / TextVQA  ``vqa_accuracy`` (10-choose-9 soft accuracy) with the EvalAI answer
                              processor (LLaVA's ``m4c_evaluator.EvalAIAnswerProcessor``) or the
                              official ``vqaEval.py`` rule; ``vqa_chance`` for a uniform guesser
    GQA                       ``gqa_match``: LLaVA's ``convert_gqa_for_eval`` + the official exact match
    POPE                      ``pope_parse`` / ``pope_metrics`` (LLaVA ``eval_pope.py``)
    Quilt-VQA                 ``quilt_normalize``, ``quilt_open_scores`` (exact match, token P/R/F1) and
                              ``quilt_closed_parse`` (Quilt-LLaVA ``quilt_eval.py``)
    MMBench                   ``mc_extract`` (the rule-based part of MMBench's matcher, no GPT),
                              ``circular_accuracy`` and ``mmbench_main_index`` (CircularEval)
    SEED-Bench                ``seed_match`` (LLaVA ``convert_seed_for_submission.py``)
    ScienceQA                 ``sqa_parse`` (LLaVA ``eval_science_qa.py``)
    MME                       ``mme_parse`` / ``mme_scores`` (MME ``eval_tool/calculation.py``)

Model texts are expected as LLaVA's answer files hold them: the decoded output with ``.strip()``
applied (every ``model_vqa*`` loader strips). Accuracies are fractions in [0, 1]; MME scores are
on MME's own scale (max 200 per subtask).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
LETTER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
VIZWIZ_SUFFIX = (
    "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
    "\nAnswer the question using a single word or phrase."
)

# ---------------------------------------------------------------------------------------------
# VQA answer normalisation (the same tables in vqaEval.py and EvalAIAnswerProcessor)
# ---------------------------------------------------------------------------------------------

# Keys with capitals ("Im", "Ive", ...) never match after lower-casing; kept as in the originals.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# "(?!<=\d)" is a (no-op) look-ahead for the literal "<=", as written in both originals: in effect
# a period is removed unless a digit follows it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_EVALAI = re.compile(r"(?<=\d)(\,)+(?=\d)")
_COMMA_OFFICIAL = re.compile(r"(\d)(\,)(\d)")
# Both originals call ``PERIOD_STRIP.sub("", text, re.UNICODE)``: the third argument is ``count``,
# so at most re.UNICODE == 32 periods are removed. Reproduced.
_PERIOD_COUNT = int(re.UNICODE)


def _process_punctuation(text: str, comma: re.Pattern) -> str:
    """A mark next to a space in the *input* (or any mark, when the input has a digit-comma-digit)
    is deleted, otherwise replaced by a space; then periods not followed by a digit go."""
    out = text
    delete_all = comma.search(text) is not None
    for p in PUNCTUATION:
        if delete_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def _process_digit_article(text: str) -> str:
    """Lower-case, number words -> digits, drop a/an/the, expand contractions, single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def evalai_normalize(text: str) -> str:
    """EvalAIAnswerProcessor (LLaVA ``m4c_evaluator.py``, from mmf): lower-case, delete ',' and '?',
    "'s" -> " 's", strip; newlines/tabs -> spaces; punctuation; digits/articles/contractions."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text, _COMMA_EVALAI))


def vqa_normalize(text: str) -> str:
    """The official ``vqaEval.py``: ``processPunctuation`` then ``processDigitArticle``."""
    return _process_digit_article(_process_punctuation(text, _COMMA_OFFICIAL))


def _soft_score(pred: str, gts: list[str]) -> float:
    """Mean over the 10 leave-one-out subsets of min(1, #matches among the other 9 / 3)."""
    k = sum(g == pred for g in gts)
    return sum(min(1.0, (k - (g == pred)) / 3) for g in gts) / len(gts)


def _check_ten(gt_answers: list[str]) -> None:
    if len(gt_answers) != 10:
        raise ValueError(f"VQA accuracy needs exactly 10 ground-truth answers, got {len(gt_answers)}")


def vqa_accuracy(pred: str, gt_answers: list[str], normalize: str = "evalai") -> float:
    """VQA accuracy of one prediction against its 10 human answers, in [0, 1]; k matching humans
    give 0, .3, .6, .9, 1 for k = 0, 1, 2, 3, >=4.

    ``normalize="evalai"``: the EvalAI processor on ``pred`` and every answer (LLaVA's TextVQA
    evaluator, LLaVA's VQAv2/VizWiz submission converters, lmms-eval).
    ``normalize="official"``: ``vqaEval.py``: newlines/tabs -> spaces and strip everywhere; then
    ``vqa_normalize`` on ``pred`` and every answer only if the answers are not all identical
    (so with 10 identical answers "Yes." does not match "yes").
    """
    _check_ten(gt_answers)
    if normalize == "evalai":
        return _soft_score(evalai_normalize(pred), [evalai_normalize(g) for g in gt_answers])
    if normalize == "official":
        def clean(s: str) -> str:
            return s.replace("\n", " ").replace("\t", " ").strip()
        pred, gts = clean(pred), [clean(g) for g in gt_answers]
        if len(set(gts)) > 1:
            pred, gts = vqa_normalize(pred), [vqa_normalize(g) for g in gts]
        return _soft_score(pred, gts)
    raise ValueError(f"normalize must be 'evalai' or 'official', not {normalize!r}")


def vqa_chance(gt_lists: list[list[str]]) -> float:
    """Accuracy of a guesser that answers uniformly at random among every distinct EvalAI-normalised
    answer occurring in ``gt_lists``: the mean over questions of the mean over that vocabulary of
    ``vqa_accuracy`` (answers a question's humans never gave score 0)."""
    if not gt_lists:
        raise ValueError("vqa_chance needs at least one question")
    for gts in gt_lists:
        _check_ten(gts)
    norm = [[evalai_normalize(g) for g in gts] for gts in gt_lists]
    vocab = {g for gts in norm for g in gts}
    per_question = [sum(_soft_score(u, gts) for u in set(gts)) / len(vocab) for gts in norm]
    return sum(per_question) / len(per_question)


# ---------------------------------------------------------------------------------------------
# GQA
# ---------------------------------------------------------------------------------------------


def gqa_normalize(text: str) -> str:
    """LLaVA ``convert_gqa_for_eval.py``: ``text.rstrip('.').lower()``."""
    return text.rstrip(".").lower()


def gqa_match(pred: str, gold: str) -> bool:
    """The official GQA ``eval.py`` accuracy: the normalised prediction equals the gold answer as is."""
    return gqa_normalize(pred) == gold


# ---------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------


def pope_parse(text: str, first_sentence: bool = True) -> str:
    """LLaVA ``eval_pope.py``: keep the text before the first '.', delete commas, split on ' ';
    'no' if any word is exactly 'No', 'not' or 'no', else 'yes' (so "" and "Not really" are 'yes').
    ``first_sentence=False`` reads the whole text, as Quilt-LLaVA's copy of the parser does."""
    if first_sentence:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_metrics(preds: list[str], labels: list[str]) -> dict:
    """POPE metrics with 'yes' the positive class. ``preds``: raw model texts (``pope_parse``);
    ``labels``: 'yes'/'no' (case and surrounding spaces ignored; anything else raises ValueError).

    Returns tp, fp, tn, fn, acc, precision, recall, f1 and yes_ratio (the fraction of
    *predictions* that are 'yes'). Where the official script would divide by zero (no predicted
    or no true 'yes'; P + R = 0) precision/recall/f1 are 0.0 instead.
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not preds:
        raise ValueError("pope_metrics needs at least one prediction")
    gold = [lab.strip().lower() for lab in labels]
    bad = sorted({lab for lab, g in zip(labels, gold) if g not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {bad}")
    parsed = [pope_parse(p) for p in preds]
    pairs = list(zip(parsed, gold))
    tp = pairs.count(("yes", "yes"))
    fp = pairs.count(("yes", "no"))
    tn = pairs.count(("no", "no"))
    fn = pairs.count(("no", "yes"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "acc": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": parsed.count("yes") / n,
    }


# ---------------------------------------------------------------------------------------------
# Quilt-VQA (Quilt-LLaVA ``llava/eval/quilt_eval.py``)
# ---------------------------------------------------------------------------------------------


def quilt_normalize(text: str) -> str:
    """Quilt-LLaVA's ``normalize_word`` of the lower-cased text. It is ``vqa_normalize`` (vqaEval.py's
    punctuation rule, periods not followed by a digit dropped, number words none/zero..ten -> digits,
    a/an/the dropped, contractions expanded, single spaces); its last step, deleting commas, finds none
    left. "The Nucleus." -> "nucleus", "A, B and C" -> "b and c", "1,000 cells" -> "1000 cells"."""
    return vqa_normalize(text.lower())


def _quilt_words(text: str) -> Counter:
    # quilt_eval.py normalises both texts, then each metric normalises its inputs again; the second
    # pass changes only a text that still has periods after the first (more than 32 of them).
    return Counter(quilt_normalize(quilt_normalize(text)).split())


def quilt_open_scores(pred: str, gold: str) -> dict:
    """The OPEN-question scores of one answer, as Quilt-LLaVA computes them (``calculate_exactmatch``,
    ``calculate_f1score``), each in [0, 1]. With C and R the word counts of the normalised
    prediction (candidate) and gold answer (reference), split on whitespace:

        exact_match = #distinct words of R found in C / (number of words of C)
        precision   = tp / (tp + fp),  recall = tp / (tp + fn),  f1 = 2 P R / (P + R)
        tp = sum of C[w] over words in both (the *candidate's* count, in recall too),
        fp = sum of C[w] over words only in C,  fn = sum of R[w] over words only in R.

    So "exact match" is a precision over distinct gold words ("carcinoma" for "squamous cell
    carcinoma" scores 1), and a repeated word counts in recall by its repeats ("cell cell cell" for
    "cell nucleus": recall 3/4). Everything is 0 when C is empty; precision, recall and f1 are 0
    when R is empty or tp = 0. The paper's "open-set recall" is ``recall``.
    """
    cand, ref = _quilt_words(pred), _quilt_words(gold)
    total = sum(cand.values())
    if total == 0:
        return {"exact_match": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    exact = sum(w in cand for w in ref) / total
    tp = sum(n for w, n in cand.items() if w in ref)
    fn = sum(n for w, n in ref.items() if w not in cand)
    if not ref or tp == 0:
        return {"exact_match": exact, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision, recall = tp / total, tp / (tp + fn)
    return {"exact_match": exact, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall)}


def quilt_closed_parse(pred: str) -> str:
    """'yes'/'no' of an answer to a CLOSED question, as Quilt-LLaVA reads it: ``quilt_normalize`` (once),
    then the POPE parser on the whole text (Quilt comments the first-sentence cut out). So "No." and
    "NO!" are 'no', "Yes. There is no necrosis." is 'no', and "", "Nope" and "None" (-> "0") are 'yes'."""
    return pope_parse(quilt_normalize(pred), first_sentence=False)


# ---------------------------------------------------------------------------------------------
# MMBench
# ---------------------------------------------------------------------------------------------

_MC_MARKS = ".()[],:;!*#{}"
_MC_REFUSALS = ("Failed to obtain answer via API", "Sorry, I can't help with images of people yet.", "I can't process this file.",
                "I'm sorry, but without the image provided", "Cannot determine the answer")  # can_infer_option's: no choice


def mc_extract(answer: str, options: dict[str, str]) -> str | None:
    """The rule-based choice extraction of MMBench (VLMEvalKit ``can_infer``: ``can_infer_option``,
    then ``can_infer_text``), without the GPT fallback.

    1. Replace each of ``.()[],:;!*#{}`` with a space and split on whitespace. If exactly one key
       of ``options`` is a whole token (so "B", "B.", "(B)", "B)", "B:", "B. blue" all give B),
       return it. Keys are matched case-sensitively: a lowercase "b" is not the option B.
    2. Else, if exactly one option text occurs in the answer (both lower-cased, substring test),
       return its key.
    3. Else None (two letters such as "A and B", no match, or several texts).

    As in VLMEvalKit without ``VERBOSE`` set, an article "A" counts as the letter A ("A cat" -> A
    if "A" is an option). An answer containing one of ``can_infer_option``'s refusal strings ("I'm
    sorry, but without the image provided ...") gives None before any matching, even if it names an
    option; a bare "Z" (MMBench's "no option") gives None.
    """
    if any(r in answer for r in _MC_REFUSALS):
        return None
    mod = answer
    for c in _MC_MARKS:
        mod = mod.replace(c, " ")
    tokens = mod.split()
    hits = [k for k in options if k in tokens]
    if len(hits) == 1:
        return hits[0]
    low = answer.lower()
    texts = [k for k, v in options.items() if str(v).lower() in low]
    return texts[0] if len(texts) == 1 else None


def mmbench_main_index(index: int) -> int:
    """The main question of an MMBench row: circular copies are stored at ``index + k * 1e6``."""
    return index % 1_000_000


def circular_accuracy(correct: dict) -> float:
    """CircularEval: ``correct`` maps a main question index to its variants' correctness
    (list of bool); a question counts only if every variant is right. Mean over questions."""
    if not correct:
        raise ValueError("circular_accuracy needs at least one question")
    return sum(all(v) for v in correct.values()) / len(correct)


# ---------------------------------------------------------------------------------------------
# SEED-Bench and ScienceQA
# ---------------------------------------------------------------------------------------------


def seed_match(pred: str, answer: str) -> bool:
    """LLaVA ``convert_seed_for_submission.py``: the answer-file text equals the answer letter
    exactly (no parsing, case-sensitive). ``pred`` is stripped first, as LLaVA's loader strips the
    decoded text before writing it; a stripped text is compared as is."""
    return pred.strip() == answer


_SQA_LETTERS = ["A", "B", "C", "D", "E"]
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def sqa_parse(pred: str, options: list[str]) -> str:
    """LLaVA ``eval_science_qa.py`` (``pred`` stripped first, as LLaVA's decoder does):

    1. ``pred`` is one of A-E -> it;
    2. else ``len(pred) >= 3``, ``pred[0]`` in A-E and ``pred[1:3] == ". "`` -> ``pred[0]``;
    3. else ``re.findall(r'The answer is ([A-Z]).', pred)`` has exactly one match -> it
       (the '.' is any character, so "The answer is B" at the very end does not match);
    4. else "FAILED".

    The official ``get_pred_idx`` then scores a letter outside the first ``len(options)`` as wrong;
    here such a letter is returned as "FAILED", so ``sqa_parse(...) == gold letter`` is the
    official correctness. Steps 1-2 test against all of A-E (not only the question's letters),
    as the original does: "D. ..." on a 3-option question is "FAILED", not parsed further.
    """
    pred = pred.strip()
    if pred in _SQA_LETTERS:
        letter = pred
    elif len(pred) >= 3 and pred[0] in _SQA_LETTERS and pred[1:3] == ". ":
        letter = pred[0]
    else:
        found = _SQA_ANSWER_IS.findall(pred)
        letter = found[0] if len(found) == 1 else "FAILED"
    return letter if letter in _SQA_LETTERS[: len(options)] else "FAILED"


# ---------------------------------------------------------------------------------------------
# MME
# ---------------------------------------------------------------------------------------------

MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_parse(pred: str) -> str:
    """MME ``calculation.py``: lower-case; exactly 'yes'/'no' -> it; else the first 4 characters
    containing 'yes' -> 'yes', else containing 'no' -> 'no' ("not sure" -> 'no', "eyes" -> 'yes');
    else 'other' (always wrong)."""
    pred = pred.lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_scores(records: list[dict]) -> dict:
    """MME scores from ``{"subtask", "image", "pred", "gt"}`` records (gt 'Yes'/'No', any case).

    Per subtask: acc = right questions / questions, acc+ = images whose every question is right /
    images, score = acc*100 + acc+*100 (max 200). ``perception`` sums the 10 perception subtasks
    present, ``cognition`` the 4 cognition ones. An unknown subtask name or gt raises ValueError.
    The official tool pairs consecutive lines (two questions per image); here questions are
    grouped by (subtask, image), which is the same on MME's files.
    """
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        task, gt = r["subtask"], str(r["gt"]).lower()
        if task not in MME_PERCEPTION and task not in MME_COGNITION:
            raise ValueError(f"unknown MME subtask {task!r}")
        if gt not in ("yes", "no"):
            raise ValueError(f"MME gt must be yes or no, got {r['gt']!r}")
        images[task][r["image"]].append(mme_parse(r["pred"]) == gt)
    subtasks = {}
    for task, by_image in images.items():
        answers = [ok for oks in by_image.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(oks) for oks in by_image.values()) / len(by_image)
        subtasks[task] = acc * 100 + acc_plus * 100
    return {
        "subtasks": subtasks,
        "perception": sum(subtasks[t] for t in MME_PERCEPTION if t in subtasks),
        "cognition": sum(subtasks[t] for t in MME_COGNITION if t in subtasks),
    }
