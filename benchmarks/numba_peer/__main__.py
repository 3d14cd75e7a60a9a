from benchmarks.numba_peer.bench import main

main()
