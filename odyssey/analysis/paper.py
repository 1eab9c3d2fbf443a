"""The numbers and conclusions of Greff et al. (2017), as data to set beside a run's results."""

__all__ = ["BEST", "TRIALS_PER_VARIANT", "TASK_NAMES", "SIGNIFICANCE", "IMPORTANCE", "IMPORTANCE_SUMMARY", "significance"]

TASK_NAMES = {
    "timit": "TIMIT (speech)",
    "iam_online": "IAM-OnDB (handwriting)",
    "jsb": "JSB Chorales (music)",
}

# Random-search trials per variant and task (paper, Section 4.4: 27 x 200 = 5400 in all).
TRIALS_PER_VARIANT = 200

# Best test result per task and the variant that reached it (paper, Section 5.1).
BEST = {
    "timit": {"metric": 29.6, "variant": "CIFG", "text": "29.6 % frame error (CIFG)"},
    "iam_online": {"metric": 9.26, "variant": "NP", "text": "9.26 % CER (NP)"},
    "jsb": {"metric": 8.38, "variant": "NIG", "text": "8.38 nats (NIG)"},
}

_SPEECH_AND_HANDWRITING = {"timit": "worse", "iam_online": "worse", "jsb": "n.s."}

# Welch's t-test against vanilla, Bonferroni-corrected, top 10 % of 200 trials
# (paper, Fig. 2 and Section 5.1): "worse" = significantly worse, "n.s." = not significant.
SIGNIFICANCE = {
    "NIG": dict(_SPEECH_AND_HANDWRITING),
    "NFG": {"timit": "worse", "iam_online": "worse", "jsb": "worse"},
    "NOG": dict(_SPEECH_AND_HANDWRITING),
    "NIAF": dict(_SPEECH_AND_HANDWRITING),
    "NOAF": {"timit": "worse", "iam_online": "worse", "jsb": "worse"},
    "NP": {"timit": "n.s.", "iam_online": "n.s.", "jsb": "n.s."},
    "CIFG": {"timit": "n.s.", "iam_online": "n.s.", "jsb": "n.s."},
    "FGR": {"timit": "n.s.", "iam_online": "n.s.", "jsb": "worse"},
}

_NOTES = {
    ("NIG", "jsb"): "n.s. (even slightly better)",
}


def significance(variant, task):
    """The paper's verdict for a variant on a task as text ("worse", "n.s.", ...), or "" if none."""
    verdict = SIGNIFICANCE.get(variant, {}).get(task, "")
    return _NOTES.get((variant, task), verdict)


# fANOVA on the test metric (paper, Section 5.2 and Fig. 3), the same on all three tasks.
IMPORTANCE = {
    "learning_rate": "most important: above 2/3 of the variance",
    "hidden_size": "second",
    "input_noise": "third",
    "momentum": "under 1 %",
    "pairs": "small; learning rate x hidden size the largest pair",
}

IMPORTANCE_SUMMARY = (
    "Learning rate is by far the most important hyperparameter (above two thirds of the variance), "
    "then hidden size, then input noise; momentum explains under 1 %; interactions are small, "
    "learning rate x hidden size being the largest pair.")
