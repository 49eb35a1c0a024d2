"""Held-out completion evaluation and the promotion gate.

``compare`` scores a candidate and the production model on the same deterministic tasks cut
from held-out code, computes paired bootstrap intervals, and applies the gate (see
``docs/evaluation.md``). Importing this package does not import torch.
"""

from trainer.evaluate.compare import Comparison as Comparison
from trainer.evaluate.compare import ModelScores as ModelScores
from trainer.evaluate.compare import compare as compare
from trainer.evaluate.compare import score_model as score_model
from trainer.evaluate.config import EvalConfig as EvalConfig
from trainer.evaluate.forward import forward_eval as forward_eval
from trainer.evaluate.forward import read_history as read_history
from trainer.evaluate.gate import GateDecision as GateDecision
from trainer.evaluate.generate import LoadedModel as LoadedModel
from trainer.evaluate.generate import load_model as load_model
from trainer.evaluate.report import plot_history as plot_history
from trainer.evaluate.report import render_markdown as render_markdown
from trainer.evaluate.stats import Interval as Interval
from trainer.evaluate.tasks import Task as Task
from trainer.evaluate.tasks import build_tasks as build_tasks

__all__ = [
    "Comparison", "EvalConfig", "GateDecision", "Interval", "LoadedModel", "ModelScores", "Task",
    "build_tasks", "compare", "forward_eval", "load_model", "plot_history", "read_history",
    "render_markdown", "score_model",
]
