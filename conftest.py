# Root conftest: its presence puts the repository root on sys.path so tests can import the
# project packages (memory, bot, models) however pytest is started. Owned by the lead engineer.
