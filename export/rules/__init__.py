"""One VJP rule per ONNX op, listed in one table (export/rules/table.py)."""

from varrt.export.rules.table import RULES, Family, Row, lookup

__all__ = ["RULES", "Family", "Row", "lookup"]
