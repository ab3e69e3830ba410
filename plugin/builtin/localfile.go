package builtin

import (
	"bytes"
	"context"
	"fmt"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/providers/localfile"
)

// LocalFile adapts providers/localfile:
//
//	provider "localfile" "NAME" {
//	  key_file   = "kek.json"              # required
//	  passphrase = env("KEYCTL_PASSPHRASE") # optional; or passphrase_env = "KEYCTL_PASSPHRASE"
//	}
var LocalFile = plugin.Provider{
	Type: localfile.Type,
	Schema: plugin.Schema{Attributes: []plugin.Attribute{
		{Name: "key_file", Type: plugin.Path, Required: true,
			Description: "The key file (keyctl init creates one). It must not be readable by group or others."},
		{Name: "passphrase", Type: plugin.String, Secret: true,
			Description: "The passphrase of a protected key file. Without it keyctl prompts on a terminal."},
	}},
	Open: openLocalFile,
}

func openLocalFile(_ context.Context, v plugin.Values) (core.KeyProvider, error) {
	path := v.String("key_file")
	pass, given := v.Secret("passphrase")
	lp, err := localfile.Open(path, localfile.Options{RequireProtected: given, Passphrase: func() ([]byte, error) {
		if !given {
			return nil, &plugin.NeedSecretError{Attribute: "passphrase", For: "key file " + path, What: fmt.Sprintf("key file %s is passphrase-protected", path)}
		}
		return bytes.Clone(pass), nil // Open zeroes what it gets
	}})
	if err != nil {
		return nil, err
	}
	return localFileProvider{lp}, nil
}

// localFileProvider adds plugin.VersionAdmin (the `keyctl kek` commands) to
// the localfile provider; every other method is the provider's own.
type localFileProvider struct{ *localfile.Provider }

func (p localFileProvider) Versions(context.Context) (string, []plugin.VersionInfo, error) {
	vs := p.Provider.Versions()
	out := make([]plugin.VersionInfo, len(vs))
	for i, v := range vs {
		out[i] = plugin.VersionInfo{Version: v.Version, State: string(v.State), Created: v.Created, Current: v.Current}
	}
	return p.Path(), out, nil
}

func (p localFileProvider) SetVersionState(_ context.Context, version, state string) error {
	switch localfile.VersionState(state) {
	case localfile.StateEnabled:
		return p.EnableVersion(version)
	case localfile.StateDisabled:
		return p.DisableVersion(version)
	case localfile.StateDestroyed:
		return p.DestroyVersion(version)
	}
	return fmt.Errorf("unknown version state %q: %w", state, core.ErrMalformed)
}
