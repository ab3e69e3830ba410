// Package builtin lists the providers built into keyctl and adapts each to
// the plugin protocol: the schema of its configuration block and the
// mapping from the decoded attributes to the provider package's own
// constructor. keyctl serves them from its own executable
// (`keyctl __provider TYPE`), so `go install ./cmd/keyctl` is the whole
// installation.
//
// Adding a provider is one file here: a plugin.Provider value whose Open
// maps plugin.Values onto the provider's Config struct and calls its New
// (see localfile.go and docs/plugins.md), plus one line in the table below.
// The table is a plain list, not a registry filled by init functions.
package builtin

import (
	"fmt"
	"slices"

	"github.com/keyctl/keyctl/plugin"
)

// providers is the fixed table of built-in providers.
var providers = []plugin.Provider{
	LocalFile,
	AWSKMS,
	PKCS11,
}

// Lookup returns the built-in provider of type typ.
func Lookup(typ string) (plugin.Provider, bool) {
	i := slices.IndexFunc(providers, func(p plugin.Provider) bool { return p.Type == typ })
	if i < 0 {
		return plugin.Provider{}, false
	}
	return providers[i], true
}

// Types returns the built-in provider types, sorted.
func Types() []string {
	out := make([]string, len(providers))
	for i, p := range providers {
		out[i] = p.Type
	}
	slices.Sort(out)
	return out
}

// Serve serves the built-in provider typ as a plugin process; it returns
// only if typ is unknown.
func Serve(typ string) error {
	p, ok := Lookup(typ)
	if !ok {
		return fmt.Errorf("no built-in provider of type %q (built in: %v)", typ, Types())
	}
	plugin.Serve(p)
	return nil
}
