"""The query contract, kept importable here for users of `from biomm.query.schema import QueryRequest`:
it lives in `biomm.schema` (so that heads may use it)."""
from biomm.schema import *  # noqa: F401,F403
from biomm.schema import __all__  # noqa: F401
