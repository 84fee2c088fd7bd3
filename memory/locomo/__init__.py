"""LoCoMo benchmark support: dataset loader, the dataset's own QA scoring, and result reports.

Submodules: :mod:`memory.locomo.dataset`, :mod:`memory.locomo.scoring` and
:mod:`memory.locomo.report` (imported lazily by callers because it pulls in matplotlib).
"""

from memory.locomo.dataset import Conversation, Question, Session, Turn, load_locomo
from memory.locomo.scoring import context_has_answer, score_answer

__all__ = [
    "Conversation",
    "Question",
    "Session",
    "Turn",
    "context_has_answer",
    "load_locomo",
    "score_answer",
]
