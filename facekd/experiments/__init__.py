"""The paper's experiment tables as data, a resumable runner, and the RESULTS.md report.

- :mod:`.tables`: tables A-D (Wang et al., ICIP 2018, and the methods around
  it) and the protocols that scale them;
- :mod:`.results`: the results file (one JSON line per finished run, a :class:`Result`;
  owner of the format);
- :mod:`.runner`: runs rows and the teachers they need, resumably, within a budget;
- :mod:`.report`: renders docs/RESULTS.md with a verdict per finding;
- :mod:`.board`: the accuracy–latency board of ready and facekd models (``facekd board``),
  shown by :mod:`.board_view`;
- :mod:`.compare`: a student against its teacher, the table ``facekd demo`` prints;
- :mod:`.quick`: the short CPU distillation of ``facekd demo --distill``.

Every finished run appends one JSON line to a results file, so a suite can be spread
over several commands (each retrains the teachers it needs, since a checkpoint may not
travel back from the machine that made it) and the report is rebuilt from whatever
results exist.
"""

from facekd.experiments.report import write_report
from facekd.experiments.results import Result, read_results
from facekd.experiments.runner import Runner
from facekd.experiments.tables import TABLES, Protocol, Row, protocols

__all__ = ["TABLES", "Protocol", "Result", "Row", "Runner", "protocols", "read_results", "write_report"]
