"""A rule-based labeler for the 14 CheXpert observations, written from scratch.

It follows the *design* of the CheXpert labeler (Irvin et al. 2019; stanfordmlgroup/chexpert-labeler)
-- mention extraction, then negation and uncertainty classification of each mention, then
aggregation per report and the "No Finding" rule -- but none of its phrase lists or its
dependency-parse rules: CheXpert needs a parser model, CoreNLP and NLTK data that must be
downloaded. Here every rule is a regular expression over one *clause* (a sentence cut at
"but", "however", ...), NegEx-style (Chapman et al. 2001). It is deterministic and labels the
2,955 IU X-Ray findings in about a second. Call its output "rule-labeler CE", never "CheXbert CE".

Per mention, in the CheXpert order:

1. *pre-negation uncertainty*: phrases that contain a negation word but mean "maybe"
   ("cannot be excluded", "not ruled out") -> uncertain;
2. *negation*: a cue before the mention in the same clause ("no", "without", "free of",
   "negative for", ...) or a short post-cue ("... is not seen", "... has resolved") -> negative;
3. *uncertainty*: a cue before the mention in the clause ("may", "possible", "likely",
   "suggest", ...) or just after it ("... is likely", "... versus") -> uncertain;
4. otherwise positive.

"No change in X" and "unchanged X" are *pseudo-negations* (X is still there). Heart and
mediastinum need an attribute: "heart size", "cardiac silhouette", "cardiomediastinal contour"
are only labelled when a size word is nearby ("normal", "upper limits of normal" -> negative,
"enlarged" -> positive, "borderline" -> uncertain); "over the heart" and "retrocardiac" never count.

Aggregation per observation: positive > uncertain > negative > blank (a positive mention anywhere
wins), a positive or uncertain "heart failure"/"chf" adds an uncertain Cardiomegaly, and
No Finding is positive exactly when the report *says something* (has a word: a letter or digit)
and no observation other than Support Devices and no *other abnormal finding* (emphysema,
granuloma, hernia, scoliosis, ...; ``MENTIONS["_other"]``) is positive or uncertain; otherwise
No Finding is blank. The first condition is the book's choice, in the spirit of the CheXpert and
CheXbert labelers (No Finding asserts that a read study is normal): an empty or punctuation-only
report gets no label at all, so an empty generation earns no clinical-efficacy credit on
No Finding. A report of words that mention nothing ("xxxx .") is still No Finding.

Cost: linear in the length of a report. The cues before a mention are found with one scan per
clause (:class:`_Cues`), not one scan of the text before each mention, which made a long clause of
repeated findings quadratic (100k characters took 40 s).

Output codes follow PromptMRG's four classes so that they can be used directly as targets of a
14 x 4 classification head: 0 blank (not mentioned), 1 positive, 2 negative, 3 uncertain.
``labels_to_binary`` maps them to the clinical-efficacy convention of the CAME-Grad trainer:
positive-or-uncertain = 1, else 0.

Known limits: no syntax, so a negation cue far before a mention in a long list can over-reach;
"or" is an uncertainty cue ("atelectasis or pneumonia"); laterality and temporal change are
ignored; granulomas count as other findings, not Lung Lesion. Agreement with the manual Open-i
MeSH terms is measured per observation by ``tools/rrg_report_figures.py`` (mapping in
``mesh.py``). The rules were refined by reading disagreements with MeSH over the whole corpus,
R2Gen's test split included, so that agreement is an optimistic estimate of accuracy; the
hand-labelled fixture in ``tests/fixtures/rrg`` was written before looking at the labeler's output.
"""
from __future__ import annotations

import functools
import itertools
import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence

import numpy as np

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3
STATE_NAMES = {BLANK: "blank", POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain"}
_IDX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}

# --- mention phrases (regex fragments, matched with word boundaries on lower-cased text) -----
# Each observation maps to a list of patterns; the key "_other" collects abnormal findings that
# are not one of the 14 but switch No Finding off (CheXpert's "no_finding" list plays this role).
MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"widened mediastinum", r"mediastinal widening", r"widening of the mediastinum",
        r"mediastinal enlargement", r"enlarged (?:cardio)?mediastin\w*",
        r"mediastinal (?:mass|lipomatosis)",
    ],
    "Cardiomegaly": [
        r"cardiomegaly", r"enlarged heart", r"cardiac enlargement", r"enlargement of the heart",
        r"enlarged cardiac (?:silhouette|shadow|size)", r"cardiac hypertrophy",
        r"ventricular (?:enlargement|hypertrophy)", r"atrial enlargement",
    ],
    "Lung Lesion": [
        r"nodules?", r"nodular (?:opacit\w+|densit\w+|lesions?)", r"mass(?:es)?", r"lesions?",
        r"tumou?rs?", r"neoplasms?", r"carcinoma", r"malignan\w+", r"metasta\w+",
        r"cavitary \w+", r"cavitation",
    ],
    "Lung Opacity": [
        r"opaci\w+", r"infiltrat\w*", r"densit(?:y|ies)", r"air ?space (?:disease|process)",
        r"haz(?:e|y|iness)", r"reticula\w+", r"interstitial (?:markings?|prominence|pattern|"
        r"disease|lung disease|changes?|thickening|opacit\w+)", r"scar(?:s|ring|red)?",
        r"fibros[ie]s", r"fibrotic", r"peribronchial (?:thickening|cuffing)",
        r"(?:increased|prominent|coarse|streaky|coarsened) (?:\w+ )?markings",
        r"bronchovascular (?:crowding|prominence)", r"ground[ -]glass",
    ],
    "Edema": [
        r"edema", r"(?:vascular|pulmonary|venous) congestion", r"chf", r"heart failure",
        r"cephalization", r"kerley", r"vascular (?:prominence|redistribution|engorgement)",
        r"prominen\w* (?:of the )?(?:pulmonary )?vasculature",
        r"(?:prominent|increased|engorged|congested) (?:\w+ )?vascul\w+",
        r"(?:pulmonary|lung) vascul\w+ (?:is |are )?(?:prominen\w+|congest\w+|engorge\w+|increased)",
    ],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [r"pneumonias?", r"pneumonitis", r"infection", r"infectious (?:process|etiology)",
                  r"bronchopneumonia"],
    "Atelectasis": [r"atelecta\w+", r"collapse", r"volume loss"],
    "Pneumothorax": [r"pneumothora\w+", r"hydropneumothorax"],
    "Pleural Effusion": [r"effusions?", r"pleural fluid", r"hydrothorax", r"hemothorax",
                         r"blunt\w* (?:of )?(?:the )?(?:\w+ )?(?:costophrenic|cp)",
                         r"(?:costophrenic|cp) (?:angles? |sulc\w+ |recess\w* )?(?:\w+ ){0,2}blunt\w*"],
    "Pleural Other": [
        r"pleural (?:thickening|plaques?|calcifications?|scar\w*|fibrosis|reaction|disease)",
        r"thickening of the pleura", r"fibrothorax", r"apical (?:pleural )?(?:cap|capping)",
    ],
    "Fracture": [r"fractur\w*"],
    "Support Devices": [
        r"pacemakers?", r"pacer", r"defibrillator", r"aicd", r"icd", r"cardiac (?:device|leads?)",
        r"picc", r"catheters?", r"port(?:-?a-?cath)?", r"portacath", r"(?:central|venous|"
        r"subclavian|jugular|ij|dialysis|midline) (?:venous )?(?:line|lines|catheter)",
        r"(?:endotracheal|tracheostomy|chest|nasogastric|ng|feeding|et|enteric|gastric) tubes?",
        r"tracheostomy", r"stents?", r"(?:sternotomy|sternal) (?:wires?|sutures?)",
        r"(?:prosthetic|mechanical|replaced) (?:\w+ )?valves?", r"valve replacement",
        r"(?:\w+ )?devices?", r"leads?", r"generator", r"drains?", r"hardware", r"stimulators?",
        r"prosthes[ie]s", r"prosthetic",
        r"tip (?:of the \w+ )?(?:is |are )?(?:in|at|overl\w+|project\w+|terminat\w+|lies|located|visualized)",
    ],
    "_other": [
        r"emphysema\w*", r"copd", r"chronic obstructive", r"hyperinflat\w+", r"hyperexpan\w+",
        r"hyperaerat\w+", r"overinflat\w+", r"flatten\w* (?:of the )?(?:hemi)?diaphragms?",
        r"granulom\w+", r"calcified (?:lymph )?nodes?", r"calcificat\w+", r"calcified",
        r"hernia\w*", r"(?:levo|dextro|kypho)?scolio\w+", r"kyphos\w+", r"kyphotic", r"degenerat\w+", r"spondyl\w+",
        r"osteophyt\w+", r"osteopeni\w+", r"tortu\w+", r"ectatic", r"ectasia", r"aneurysm\w*",
        r"atheroscl\w+", r"elevat\w+ (?:of the )?(?:left |right )?hemidiaphragm",
        r"eventration", r"bronchiectasis", r"adenopathy", r"lymphadenopathy",
        r"hilar (?:enlargement|prominence|fullness|adenopathy)", r"(?:enlarged|prominent) "
        r"(?:pulmonary arter\w+|hil\w+)", r"pulmonary (?:arterial )?hypertension", r"deformit\w+",
        r"sternotomy", r"(?:surgical|postsurgical) (?:clips?|changes?)", r"postoperative",
        r"pneumomediastinum", r"pneumoperitoneum", r"free air", r"subcutaneous emphysema",
        r"pericardial effusion", r"cysts?", r"bullae?", r"bullous", r"blebs?",
        r"hypoinflat\w+", r"low lung volumes?", r"decreased lung volumes?", r"arthritis",
        r"arthriti\w+", r"fusion", r"mastectomy", r"lobectomy", r"pneumonectomy",
        r"foreign bod\w+", r"thickening",
    ],
}

# Mentions that are at most uncertain: blunted costophrenic angles may be fluid or pleural thickening.
FORCED_UNCERTAIN = re.compile(r"blunt")

# Anatomical mentions that need a size attribute (see the module docstring).
ATTRIBUTE_MENTIONS: dict[str, str] = {
    "Cardiomegaly": r"heart(?: size)?|cardiac (?:and \w+ )?(?:silhouettes?|size|contours?|shadow|border)",
    "Enlarged Cardiomediastinum": r"(?:cardio)?mediastin\w*(?: (?:silhouette|contours?|width))?",
}
_ATTR_POS = r"enlarg\w*|widen\w*|increased|prominen\w+|large|big|mildly enlarged|cardiomegaly"
# "upper limits of normal" / "top normal" count as normal (the Open-i indexers code them "normal");
# only "borderline" is uncertain.
_ATTR_UNC = r"borderline"
_ATTR_NEG = r"normal|within normal limits|unremarkable|not enlarged|no enlargement"

# Matches that are never mentions of the keyed observation.
UNMENTIONS: dict[str, list[str]] = {
    "Pleural Effusion": [r"pericardial effusions?", r"joint effusions?"],
    # healed granulomatous disease is an old infection, not pneumonia
    "Pneumonia": [r"(?:granulomatous|histoplasm\w*|tuberculous|prior|old|previous|remote|healed)"
                  r" (?:\w+ ){0,2}infection"],
    "Lung Opacity": [r"(?:bone|bony|osseous|soft tissue|breast|nipple) (?:opacit\w+|densit\w+)",
                     r"density of the (?:bones?|soft tissues?)", r"scar\w* (?:in|of) the (?:chest wall|breast)"],
    "Lung Lesion": [r"(?:soft tissue|breast|nipple|skin|bony|bone|osseous|lytic|sclerotic)"
                    r" (?:masse?s?|lesions?|nodules?)",
                    r"massive", r"mass effect", r"calcified (?:lymph )?nodes?"],
    "Support Devices": [r"port(?:ion|able|ions)", r"leads? to", r"leading", r"portion",
                        r"(?:ng|et) al"],
    "Atelectasis": [r"collapse of the (?:vertebra\w*|vertebral body)", r"vertebral (?:body )?collapse"],
    "Cardiomegaly": [r"(?:over|overly|overlying|behind|projecting over|in) the (?:left |right )?heart",
                     r"retrocardiac", r"heart (?:failure|disease)"],
    "Enlarged Cardiomediastinum": [r"mediastinal (?:lymph )?nod\w+", r"mediastinal clips?",
                                   r"pneumomediastinum", r"superior mediastinum"],
}

# --- negation / uncertainty cues ---------------------------------------------------------------
_PRE_NEG_UNCERTAIN = re.compile(
    r"\b(?:cannot|can ?not|could not|may not|not) (?:be )?(?:entirely |completely |totally )?"
    r"(?:exclude|excluded|rule[sd]? out|ruled out)\b|\bnot (?:entirely |completely )?(?:excluded|ruled out)\b"
    r"|\bdifficult to exclude\b|\bno definite\w* (?:evidence )?(?:of )?\w+ (?:but|although)\b"
)
_PSEUDO_NEG = re.compile(
    r"\bno (?:significant |interval |appreciable |substantial )?(?:change|increase|worsening)\b"
    r"|\bwithout (?:significant |interval )?change\b|\bnot only\b|\bno longer (?:change)\b"
    r"|\bnot significantly changed\b|\bunchanged\b|\bgram negative\b"
)
_NEG_PRE = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|absent|resolution of|resolved|"
    r"rather than|never|nor|neither|none|removal of|interval removal|no evidence of|no signs? of|"
    r"no findings? of|no radiographic evidence of|clear)\b"
)
_NEG_POST = re.compile(
    r"^(?:\s+\w+){0,4}?\s+(?:(?:is|are|was|were|has|have)\s+)?(?:(?:been|not)\s+)*"
    r"(?:not (?:seen|identified|present|demonstrated|visualized|appreciated|evident|noted|visible|"
    r"detected|apparent|definitely seen)|resolved|absent|cleared|removed|gone|no longer \w+|"
    r"within (?:the )?(?:normal )?limits(?: of normal)?|(?:is|are|appears?) normal)\b"
)
_UNC_PRE = re.compile(
    r"\b(?:may|might|could|possibl[ey]|probabl[ey]|likely|questionabl[ey]|question of|"
    r"suspect\w*|suspicious|concern\w*|suggest\w*|consider\w*|differential|versus|vs|"
    r"indeterminate|equivocal|uncertain|borderline|cannot|can not|r/o|rule out|"
    r"compatible with|worrisome|presum\w+|represent\w*|atypical|apparent|perhaps|vague|evaluat\w* for|"
    r"or)\b"
)
_UNC_POST = re.compile(
    r"^(?:\s+\w+){0,3}?\s+(?:(?:is|are)\s+)?(?:(?:not )?(?:likely|possible|suspected|"
    r"questioned|considered|favored)|versus|vs|or|(?:cannot|can not|not) be (?:excluded|ruled out)|"
    r"is not excluded|not excluded)\b"
)
# Words that end a cue's scope inside a sentence.
_SCOPE_END = re.compile(
    r"\b(?:but|however|although|though|except|aside from|apart from|which|there is|there are|"
    r"otherwise|whereas|while|yet)\b"
)
_CLAUSE_SPLIT = re.compile(r"\b(?:but|however|although|though|whereas|nevertheless|yet)\b")
_SENT_SPLIT = re.compile(r"(?:(?<!\d)\.(?!\d)|[;!?\n])")

_NEG_ATTR_PREFIX = re.compile(r"\b(?:not|no|without)\s+(?:\w+\s+)?$")


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b")


_MENTION_RE = {k: _compile(v) for k, v in MENTIONS.items()}
_UNMENTION_RE = {k: _compile(v) for k, v in UNMENTIONS.items()}
_ATTR_RE = {k: re.compile(r"\b(?:" + v + r")\b") for k, v in ATTRIBUTE_MENTIONS.items()}
_ATTR_POS_RE = re.compile(r"\b(?:" + _ATTR_POS + r")\b")
_ATTR_UNC_RE = re.compile(r"\b(?:" + _ATTR_UNC + r")\b")
_ATTR_NEG_RE = re.compile(r"\b(?:" + _ATTR_NEG + r")\b")
_CUT_POS_WINDOW = re.compile(r"\b(?:with|and|but|or|while)\b")
_CHF_RE = re.compile(r"\b(?:chf|heart failure)\b")
_WORD = re.compile(r"[^\W_]")     # a letter or digit: the report says something


def normalize(text: str) -> str:
    """Lower-case, ``and/or`` -> ``or``, ``x/y`` -> ``x or y``, hyphens to spaces, collapse space."""
    t = text.lower().replace("and/or", "or")
    t = re.sub(r"(?<=[a-z])/(?=[a-z])", " or ", t)
    t = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", t)
    t = t.replace(",", " , ")
    return re.sub(r"\s+", " ", t).strip()


def clauses(text: str) -> list[str]:
    """Split a report into clauses: sentences (``.``, ``;``, ``?``, ``!``, and R2Gen's
    space-separated period), then at contrastive conjunctions, so that cues never cross into an
    unrelated statement."""
    out = []
    for sent in _SENT_SPLIT.split(normalize(text)):
        for c in _CLAUSE_SPLIT.split(sent):
            c = c.strip(" ,")
            if c:
                out.append(" " + c + " ")
    return out


class _Blocked:
    """The spans a mention of ``obs`` in ``clause`` must not overlap: its unmentions and, for an
    anatomical mention, the explicit mentions. A lookup is O(log n) (scanning a list for every
    mention was quadratic in the mentions of a clause); the spans are only found once asked for,
    as most observations are not mentioned in a clause at all."""

    def __init__(self, obs: str, clause: str, *, attribute: bool = False) -> None:
        self.obs, self.clause, self.attribute = obs, clause, attribute
        self._starts: list[int] | None = None

    def _find(self) -> list[int]:
        obs, clause = self.obs, self.clause
        spans = [m.span() for m in _UNMENTION_RE[obs].finditer(clause)] if obs in _UNMENTION_RE else []
        if self.attribute:
            # an anatomical word inside an explicit mention ("mediastinal widening") is not a second mention
            spans += [m.span() for m in _MENTION_RE[obs].finditer(clause)]
        spans.sort()
        self._starts = [a for a, _ in spans]
        # the furthest end among the first i + 1 spans (spans of two regexes may nest or overlap)
        self._reach = list(itertools.accumulate((b for _, b in spans), max))
        return self._starts

    def hits(self, span: tuple[int, int]) -> bool:
        """Whether a blocked ``(a, b)`` has ``a < end`` and ``start < b``."""
        starts = self._find() if self._starts is None else self._starts
        start, end = span
        i = bisect_left(starts, end)                  # the blocked spans with a < end
        return i > 0 and self._reach[i - 1] > start


# _Cues finds a cue in the text before a mention from one scan of a longer text. That is exact for
# regexes that see no further than what they match: no lookaround, no anchor, no \B (checked here).
for _rx in (_SCOPE_END, _PRE_NEG_UNCERTAIN, _PSEUDO_NEG, _NEG_PRE, _UNC_PRE):
    assert not re.search(r"\(\?[=!<]|[$^]|\\[BAZz]", _rx.pattern), _rx.pattern
# A negation or uncertainty cue spans at most _CUE_SPACES spaces: its patterns match a space only
# as a literal that is not repeated (checked here), so no match holds more spaces than its pattern.
for _rx in (_NEG_PRE, _UNC_PRE):
    assert set(re.findall(r"\\.", _rx.pattern)) <= {r"\b", r"\w"}, _rx.pattern
    assert not re.search(r"\.|\[[^]]*[ ^\\]|[) ][*+{]", _rx.pattern), _rx.pattern
_CUE_SPACES = max(_NEG_PRE.pattern.count(" "), _UNC_PRE.pattern.count(" "))
_WORD_CHAR = re.compile(r"\w")


def _found(span: tuple[int, int] | None, k: int) -> bool | None:
    """Whether a regex whose first match in a text is ``span`` matches in ``text[:k]``, when
    ``text[k - 1]`` is not a word character; None if the match straddles ``k`` (unknown)."""
    if span is None or span[0] >= k:
        return False
    return True if span[1] < k else None


def _first(rx: re.Pattern[str], text: str) -> tuple[int, int] | None:
    m = rx.search(text)
    return m.span() if m else None


class _Scope:
    """The first cues of one scope of a clause (from a scope end to the next scope-end word)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pre_neg_uncertain = _first(_PRE_NEG_UNCERTAIN, text)
        pseudo = [m.span() for m in _PSEUDO_NEG.finditer(text)]
        self._pseudo_starts = [a for a, _ in pseudo]
        self._pseudo_ends = [b for _, b in pseudo]
        # characters lost by masking the first i pseudo-negations with " _ "
        self._shrink = [0, *itertools.accumulate(b - a - 3 for a, b in pseudo)]
        self.masked = _PSEUDO_NEG.sub(" _ ", text)
        self.neg = _first(_NEG_PRE, self.masked)
        self.unc = _first(_UNC_PRE, self.masked)

    def cues(self, j: int) -> tuple[bool, bool, bool] | None:
        """(pre-negation uncertainty, negation, uncertainty) in ``text[:j]``; None: unknown."""
        i = bisect_left(self._pseudo_ends, j)                  # pseudo-negations ending before j
        pre_neg_unc = _found(self.pre_neg_uncertain, j)
        neg: bool | None
        unc: bool | None
        if i < len(self._pseudo_starts) and self._pseudo_starts[i] < j:
            neg, unc = self._cut_pseudo(i, j)
        else:
            jm = j - self._shrink[i]                            # j in the masked text
            neg, unc = _found(self.neg, jm), _found(self.unc, jm)
        if pre_neg_unc is None or neg is None or unc is None:
            return None
        return pre_neg_unc, neg, unc

    def _cut_pseudo(self, i: int, j: int) -> tuple[bool, bool]:
        """Negation and uncertainty cues in ``text[:j]`` when pseudo-negation ``i`` straddles ``j``
        ("no change device": the mention "change device" starts inside "no change"). The prefix,
        masked, is the masked text up to that pseudo-negation (``masked[:cut]``) and then its own
        cut-off words: a cue is either in the first part or ends in the second, and then it starts
        within the last ``_CUE_SPACES`` spaces before the cut."""
        start = self._pseudo_starts[i]
        cut = start - self._shrink[i]
        pieces, at = [], start
        for m in _PSEUDO_NEG.finditer(self.text, start, j):    # the prefix's own pseudo-negations
            pieces += [self.text[at:m.start()], " _ "]
            at = m.end()
        pieces.append(self.text[at:j])
        lo = cut
        for _ in range(_CUE_SPACES + 1):
            lo = self.masked.rfind(" ", 0, lo)
            if lo < 0:
                break
        near = self.masked[lo + 1:cut] + "".join(pieces)
        return (_found(self.neg, cut) is True or bool(_NEG_PRE.search(near)),
                _found(self.unc, cut) is True or bool(_UNC_PRE.search(near)))


class _Cues:
    """The negation and uncertainty cues of one clause, scanned once.

    A mention's cues are those in the text before it, back to the last scope end. Scanning that
    text anew for every mention costs O(len(clause)) each, so a clause of n repeated findings took
    O(n^2) (100k characters: 40 s). Here the scope ends are found once, each scope is scanned
    once, and a mention asks which cues end before it. That is what a scan of ``clause[:start]``
    finds, because a mention starts after a non-word character and the cue regexes look no further
    than they match: a match ending before ``start`` is found by both scans, one starting at or
    after it by neither. A mention that starts inside a cue ("is device" in "there is device",
    "change device" in "no change device"; never on the IU reports) needs a closer look: around
    the cut for a pseudo-negation (:meth:`_Scope._cut_pseudo`), else a scan of the prefix's last
    scope, which happens at most for the first cue of a scope.
    """

    def __init__(self, clause: str) -> None:
        self.clause = clause
        spans = [m.span() for m in _SCOPE_END.finditer(clause)]
        self._starts = [a for a, _ in spans]
        self._ends = [b for _, b in spans]
        self._scopes: dict[int, _Scope] = {}

    def before(self, start: int) -> tuple[bool, bool, bool]:
        """What :func:`_cues_before` ``(clause, start)`` returns."""
        clause = self.clause
        i = bisect_left(self._ends, start)                      # scope ends before the mention
        lo = self._ends[i - 1] if i else 0
        if (start == 0 or _WORD_CHAR.match(clause, start - 1)
                or (i < len(self._starts) and self._starts[i] < start)):   # a scope end straddles it
            return _cues_before(clause, start, lo)
        if i not in self._scopes:
            hi = self._starts[i] if i < len(self._starts) else len(clause)
            self._scopes[i] = _Scope(clause[lo:hi])
        found = self._scopes[i].cues(start - lo)
        return found if found is not None else _cues_before(clause, start, lo)


def _cues_before(clause: str, start: int, scanned: int = 0) -> tuple[bool, bool, bool]:
    """(pre-negation uncertainty, negation, uncertainty) cues in the scope before ``clause[start]``,
    by scanning ``clause[:start]``: the definition :class:`_Cues` must agree with. A scan of the
    scope ends of ``clause[:start]`` is known to reach ``scanned`` between two matches."""
    # A cue's scope ends at a terminator: only look at the text after the last terminator.
    lo = scanned
    for m in _SCOPE_END.finditer(clause, scanned, start):      # endpos: as if cut at start
        lo = m.end()
    scope = clause[lo:start]
    scope_masked = _PSEUDO_NEG.sub(" _ ", scope)
    return (bool(_PRE_NEG_UNCERTAIN.search(scope)), bool(_NEG_PRE.search(scope_masked)),
            bool(_UNC_PRE.search(scope_masked)))


def _at(rx: re.Pattern[str]) -> re.Pattern[str]:
    """``rx`` without its leading ``^``: ``_at(rx).match(clause, end)`` is ``rx.search(clause[end:])``
    (the pattern then starts with whitespace, not an assertion), without copying the rest of the
    clause for every mention."""
    assert rx.pattern.startswith(r"^(?:\s+\w+)"), rx.pattern
    return re.compile(rx.pattern[1:])


_NEG_POST_AT = _at(_NEG_POST)
_UNC_POST_AT = _at(_UNC_POST)


def _classify(clause: str, start: int, end: int, cues: _Cues | None = None) -> int:
    """State of the mention ``clause[start:end]`` from the cues around it (module docstring).

    Pass the clause's ``cues`` when classifying many mentions of one clause (linear cost)."""
    found = cues.before(start) if cues is not None else _cues_before(clause, start)
    pre_neg_uncertain, negated, uncertain = found
    if pre_neg_uncertain or _PRE_NEG_UNCERTAIN.search(clause[end:end + 60]):
        return UNCERTAIN
    if negated or _NEG_POST_AT.match(clause, end):
        return NEGATIVE
    if uncertain or _UNC_POST_AT.match(clause, end):
        return UNCERTAIN
    return POSITIVE


def _words_before(clause: str, start: int, n: int, cut: str | None = None) -> list[str]:
    """``clause[:start].split(cut)[-1].split()[-n:]`` (``cut`` None: no cut), reading back only as
    far as needed: splitting the whole prefix for every mention was quadratic."""
    width = 64
    while True:
        lo = max(0, start - width)
        window = clause[lo:start]
        if cut is not None and cut in window:
            return window.rsplit(cut, 1)[1].split()[-n:]
        words = window.split()
        if lo == 0 or len(words) > n:          # the first word may be cut off; it is not returned
            return words[-n:]
        width *= 4


def _words_after(clause: str, end: int, n: int) -> list[str]:
    """``clause[end:].split()[:n]``, reading on only as far as needed."""
    width = 64
    while True:
        words = clause[end:end + width].split()
        if end + width >= len(clause) or len(words) > n:
            return words[:n]
        width *= 4


def _attribute_state(clause: str, start: int, end: int) -> int:
    """State of an anatomical mention (heart, mediastinum) from size words within a few words."""
    left = " ".join(_words_before(clause, start, 4))
    # "normal" before the noun must be adjacent ("normal heart size", "unremarkable mediastinum"),
    # and never from the previous clause ("heart size within normal limits, stable mediastinum")
    left_near = " ".join(_words_before(clause, start, 2, cut=","))
    right_words = _words_after(clause, end, 8)
    right = " ".join(right_words)
    # A positive size word must sit close and must not belong to the next noun phrase
    # ("normal heart size with enlarged pulmonary arteries"), so its window stops at a conjunction.
    right_pos = _CUT_POS_WINDOW.split(right, maxsplit=1)[0]
    left_pos = _CUT_POS_WINDOW.split(left)[-1]
    for window, is_left in ((right_pos, False), (left_pos, True)):
        m = _ATTR_POS_RE.search(window)
        if m:
            prefix = window[: m.start()]
            if _NEG_ATTR_PREFIX.search(prefix) or (is_left and _NEG_PRE.search(prefix)):
                return NEGATIVE
            if _ATTR_UNC_RE.search(left_near + " " + right) or _UNC_PRE.search(_PSEUDO_NEG.sub(" ", prefix)):
                return UNCERTAIN
            return POSITIVE
    if _ATTR_UNC_RE.search(left_near + " " + right):
        return UNCERTAIN
    if _ATTR_NEG_RE.search(left_near + " " + right):
        return NEGATIVE
    return BLANK


def _merge(a: int, b: int) -> int:
    """CheXpert aggregation: positive > uncertain > negative > blank."""
    order = {BLANK: 0, NEGATIVE: 1, UNCERTAIN: 2, POSITIVE: 3}
    return a if order[a] >= order[b] else b


def label_report(text: str) -> np.ndarray:
    """Label one report (raw or R2Gen-cleaned); returns int8 codes [14] (module docstring)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return np.array(_label_cached(text), dtype=np.int8)


@functools.lru_cache(maxsize=20000)
def _label_cached(text: str) -> tuple[int, ...]:
    # IU findings repeat a lot (2,260 distinct among 2,955), and generated reports even more
    return tuple(int(v) for v in _label_uncached(text))


def _label_uncached(text: str) -> np.ndarray:
    if not _WORD.search(text):
        # nothing said, nothing labelled: not even No Finding (module docstring)
        return np.zeros(len(CHEXPERT_OBSERVATIONS), dtype=np.int8)
    states = {k: BLANK for k in list(MENTIONS) + ["No Finding"]}
    chf = BLANK
    for clause in clauses(text):
        cues = _Cues(clause)
        for obs, rx in _MENTION_RE.items():
            blocked = _Blocked(obs, clause)
            for m in rx.finditer(clause):
                if blocked.hits(m.span()):
                    continue
                s = _classify(clause, *m.span(), cues)
                if s == POSITIVE and FORCED_UNCERTAIN.search(m.group(0)):
                    s = UNCERTAIN
                states[obs] = _merge(states[obs], s)
                if obs == "Edema" and _CHF_RE.fullmatch(m.group(0)):
                    chf = _merge(chf, s)
        for obs, rx in _ATTR_RE.items():
            blocked = _Blocked(obs, clause, attribute=True)
            for m in rx.finditer(clause):
                if blocked.hits(m.span()):
                    continue
                states[obs] = _merge(states[obs], _attribute_state(clause, *m.span()))
    if chf in (POSITIVE, UNCERTAIN):
        states["Cardiomegaly"] = _merge(states["Cardiomegaly"], UNCERTAIN)
    out = np.zeros(len(CHEXPERT_OBSERVATIONS), dtype=np.int8)
    for obs, s in states.items():
        if obs in _IDX:
            out[_IDX[obs]] = s
    abnormal = [s for k, s in states.items() if k not in ("Support Devices", "No Finding")]
    out[0] = BLANK if any(s in (POSITIVE, UNCERTAIN) for s in abnormal) else POSITIVE
    return out


def label_reports(reports: Sequence[str]) -> np.ndarray:
    """Label many reports; returns int8 codes ``[N, 14]`` in ``CHEXPERT_OBSERVATIONS`` order with
    0 blank, 1 positive, 2 negative, 3 uncertain."""
    if isinstance(reports, str):
        raise ValueError("reports must be a sequence of strings, not one string")
    out = np.zeros((len(reports), len(CHEXPERT_OBSERVATIONS)), dtype=np.int8)
    for i, r in enumerate(reports):
        if not isinstance(r, str):
            raise ValueError(f"reports[{i}] must be a str, got {type(r).__name__}")
        out[i] = label_report(r)
    return out


def labels_to_binary(states: np.ndarray) -> np.ndarray:
    """Positive-or-uncertain -> 1.0, negative or blank -> 0.0 (float32), the CE convention of the
    CAME-Grad trainer (``metrics_clinical.py`` counts classes 1 and 3 as positive)."""
    states = np.asarray(states)
    return ((states == POSITIVE) | (states == UNCERTAIN)).astype(np.float32)


def explain(text: str) -> list[tuple[str, str, str]]:
    """``(clause, observation, state)`` for every mention found: for debugging rules and teaching."""
    rows = []
    for clause in clauses(text):
        cues = _Cues(clause)
        for obs, rx in list(_MENTION_RE.items()) + list(_ATTR_RE.items()):
            attribute = rx in _ATTR_RE.values()
            blocked = _Blocked(obs, clause, attribute=attribute)
            for m in rx.finditer(clause):
                if blocked.hits(m.span()):
                    continue
                s = _attribute_state(clause, *m.span()) if attribute else _classify(clause, *m.span(), cues)
                if s != BLANK:
                    rows.append((clause.strip(), f"{obs}:{m.group(0)}", STATE_NAMES[s]))
    return rows
