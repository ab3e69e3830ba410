package main

// reasons holds the written reason for each workload where a peer library
// can be more than 10% faster than keyctl, found with pprof (see
// docs/benchmarks.md for how). The report prints the reason whenever the
// run shows the gap; a gap without a reason here is flagged in the report
// and on stderr.
var reasons = map[string]string{}
