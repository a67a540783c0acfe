//! Home of the data-path benchmarks; `make bench` drives `loadtests/bench.sh`.
