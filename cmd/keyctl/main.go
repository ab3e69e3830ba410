// Command keyctl is the command-line interface of keyctl, an envelope
// encryption tool: it wraps data keys (DEKs) under master keys (KEKs) held in
// a vault, rewraps them when a KEK rotates, and encrypts single values with a
// keyset of DEKs. It is not the Linux keyutils keyctl; `keyctl version` tells
// them apart.
//
// Run `keyctl help` for the commands; docs/cli.md in the repository describes
// them, their output and their exit codes (0 ok, 1 provider or environment
// failure, 2 usage, bad input or bad configuration).
//
// The command only wires configuration, providers and the core engine
// together and presents results; all cryptography lives in package core and
// in the providers.
package main

import (
	"os"
)

func main() {
	if code, ok := serveProvider(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
