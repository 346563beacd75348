"""Simulator benchmark (same as `vla bench sim`): env steps/s, expert episodes/min, expert MT10 success."""

from sim.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
