"""Settings: the cells (target, pool, validation and test records) an experiment runs (``conf/setting/``)."""
