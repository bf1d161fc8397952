"""The analytics aggregator: the event log projected into DuckDB, live metrics, ad-hoc SQL."""
