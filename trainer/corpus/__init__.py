"""The incremental training corpus: git history -> clean, deduplicated, secret-free shards.

See docs/corpus.md for the data layout, filters, split rule, dedupe and crash safety.
"""

from trainer.corpus.api import export as export
from trainer.corpus.api import load_spec as load_spec
from trainer.corpus.api import records_for_paths as records_for_paths
from trainer.corpus.api import shard_files as shard_files
from trainer.corpus.api import stats as stats
from trainer.corpus.api import verify as verify
from trainer.corpus.mirror import name_from_url as name_from_url
from trainer.corpus.shards import read_records as read_records
from trainer.corpus.spec import CorpusResult as CorpusResult
from trainer.corpus.spec import CorpusSpec as CorpusSpec
from trainer.corpus.update import update as update

__all__ = ["CorpusResult", "CorpusSpec", "export", "load_spec", "name_from_url", "read_records",
           "records_for_paths", "shard_files", "stats", "update", "verify"]
