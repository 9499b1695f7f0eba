"""Physical plane: the only package that touches Ray (worker pool, aggregator actor, engine)."""
