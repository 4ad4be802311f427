"""Sentence sets for quality checks and INT8 calibration, generated in code (deterministic)."""

from __future__ import annotations

import random

_HANDWRITTEN = [
    "A man is eating food.",
    "The new movie is awesome.",
    "Autoscaling model servers saves money when traffic is bursty.",
    "How do I reset my password?",
    "The quarterly revenue grew by 12% compared to last year.",
    "Kubernetes schedules pods onto nodes based on resource requests.",
    "She played the violin beautifully at the concert last night.",
    "Photosynthesis converts light energy into chemical energy.",
    "Is it going to rain tomorrow in Berlin?",
    "def add(a, b): return a + b",
    "ERROR 503: upstream connect error or disconnect/reset before headers",
    "Les modèles de langage sont utiles pour la recherche sémantique.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "弹性伸缩可以降低成本。",
    "¿Dónde está la estación de tren más cercana?",
    "1 2 3 4 5 6 7 8 9 10",
    "!!!???...",
    "",
    "ok",
    "The patient was prescribed 20 mg of the medication twice daily.",
    "Quantum entanglement links the states of two particles across distance.",
    "Please add two eggs, a cup of flour and a pinch of salt.",
    "The stock market closed lower after the central bank raised interest rates.",
    "My cat refuses to eat anything except tuna.",
]

_SUBJECTS = ["The engineer", "A small dog", "Our cluster", "The orchestra", "My neighbour", "The startup",
             "A language model", "The river", "This old laptop", "The football team"]
_VERBS = ["quickly repaired", "slowly crossed", "unexpectedly doubled", "carefully reviewed", "happily ignored",
          "completely rewrote", "loudly celebrated", "barely survived"]
_OBJECTS = ["the broken pipeline", "the muddy field", "its monthly budget", "the final symphony", "the garden fence",
            "a billion requests", "the research paper", "the winter storm"]
_TAILS = ["before sunrise.", "during the outage.", "without telling anyone.", "after the long meeting.",
          "for the third time this week.", "while everyone watched.", "", "in record time."]


def eval_sentences(n: int = 48, seed: int = 7) -> list[str]:
    """A few dozen varied sentences: handwritten ones plus generated templates and one very long text."""
    rng = random.Random(seed)
    out = list(_HANDWRITTEN)
    while len(out) < n - 2:
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}".strip()
        if s not in out:
            out.append(s)
    # one text far beyond the 256-token limit (exercises truncation) and one medium paragraph
    out.append(" ".join(_HANDWRITTEN[2:9]) * 12)
    out.append(" ".join(rng.sample(_HANDWRITTEN[:14], 6)))
    return out[:n]


_CALIBRATION_SHORT = ["hi", "yes", "no thanks", "?", "#42", "hello world", "lol", "see above", "N/A",
                      "thank you!", "ça va", "東京", "3.14159", "--help", "why?", "OK."]


def calibration_sentences(n: int = 64, seed: int = 1234) -> list[str]:
    """Calibration set for INT8: generated clauses of 1-3 parts plus very short inputs.

    Disjoint from :func:`eval_sentences` (own seed, own short strings); the short ones matter
    because an embedding of 2-3 tokens is dominated by [CLS]/[SEP], whose activations are the
    extreme ones.
    """
    rng = random.Random(seed)
    out: list[str] = list(_CALIBRATION_SHORT)
    while len(out) < n:
        k = rng.randint(1, 3)
        parts = [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}".strip()
                 for _ in range(k)]
        out.append(" ".join(parts))
    rng.shuffle(out)
    return out[:n]


def workload_sentences(n: int = 64, seed: int = 99) -> list[str]:
    """Sentences for latency/throughput runs (typical short-to-medium queries)."""
    rng = random.Random(seed)
    pool = _HANDWRITTEN[:17] + [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}".strip()
        for _ in range(40)
    ]
    return [rng.choice(pool) for _ in range(n)]
