package builtin

import (
	"bytes"
	"context"
	"fmt"
	"math"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/providers/pkcs11"
)

// PKCS11 adapts providers/pkcs11 (docs/pkcs11.md):
//
//	provider "pkcs11" "NAME" {
//	  module      = "/usr/lib/softhsm/libsofthsm2.so" # required
//	  token_label = "prod-hsm"                        # exactly one of token_label, token_serial, slot
//	  pin         = env("KEYCTL_PKCS11_PIN")          # or pin_env = "VAR", or pin_file = "pin.txt"
//	  key_label   = "orders-kek"                      # required
//	  mechanism   = "aes-gcm"                         # optional; or "aes-key-wrap-pad"
//	  sessions    = 4                                 # optional
//	}
//
// The provider needs cgo. In a build without it the block still parses and
// validates, and Open fails with the provider's own error (wrapping
// core.ErrUnsupported) that says to rebuild with CGO_ENABLED=1.
var PKCS11 = plugin.Provider{
	Type: pkcs11.Type,
	Schema: plugin.Schema{Attributes: []plugin.Attribute{
		{Name: "module", Type: plugin.Path, Required: true,
			Description: "The PKCS#11 library (shared object), e.g. /usr/lib/softhsm/libsofthsm2.so."},
		{Name: "token_label", Type: plugin.String,
			Description: "Select the token by its label (preferred; exactly one of token_label, token_serial, slot)."},
		{Name: "token_serial", Type: plugin.String,
			Description: "Select the token by its serial number (exactly one of token_label, token_serial, slot)."},
		{Name: "slot", Type: plugin.Number,
			Description: "Select the token by slot id (exactly one of token_label, token_serial, slot). SoftHSM2 changes slot ids when a token is initialised."},
		{Name: "pin", Type: plugin.String, Secret: true,
			Description: "The user PIN, from the environment: pin = env(\"VAR\") or pin_env = \"VAR\". Or give pin_file."},
		{Name: "pin_file", Type: plugin.Path,
			Description: "A file holding the user PIN (mode 0600; one trailing newline is ignored), instead of pin."},
		{Name: "key_label", Type: plugin.String, Required: true,
			Description: "CKA_LABEL of the KEK's key objects; each KEK version is one AES-256 key with this label and its own CKA_ID."},
		{Name: "mechanism", Type: plugin.String,
			Description: "How new DEKs are wrapped: \"aes-gcm\" (default, CKM_AES_GCM) or \"aes-key-wrap-pad\" (CKM_AES_KEY_WRAP_PAD)."},
		{Name: "sessions", Type: plugin.Number,
			Description: fmt.Sprintf("Logged-in sessions kept open, i.e. operations on the token at once; default %d, at most %d.", pkcs11.DefaultSessions, pkcs11.MaxSessions)},
	}},
	Open: openPKCS11,
	// The items of a batch wait for one of the provider's sessions
	// (sessions, default 4), so the session pool, not this, bounds the
	// operations on the token.
	Parallel: pkcs11.MaxSessions,
}

// pkcs11Config maps the block's attributes onto pkcs11.Config, without the
// PIN.
func pkcs11Config(v plugin.Values) (pkcs11.Config, error) {
	cfg := pkcs11.Config{
		Module:      v.String("module"),
		TokenLabel:  v.String("token_label"),
		TokenSerial: v.String("token_serial"),
		KeyLabel:    v.String("key_label"),
		Mechanism:   v.String("mechanism"),
	}
	if v.Has("slot") {
		n := v.Number("slot")
		if n < 0 || n != math.Trunc(n) || n > math.MaxUint32 {
			return cfg, fmt.Errorf("pkcs11: config: slot %v: want a slot id, a whole number from 0: %w", n, core.ErrMalformed)
		}
		s := uint(n)
		cfg.Slot = &s
	}
	if v.Has("sessions") {
		n := v.Number("sessions")
		if n < 0 || n != math.Trunc(n) || n > pkcs11.MaxSessions {
			return cfg, fmt.Errorf("pkcs11: config: sessions %v: want a whole number from 0 (default %d) to %d: %w", n, pkcs11.DefaultSessions, pkcs11.MaxSessions, core.ErrMalformed)
		}
		cfg.Sessions = int(n)
	}
	return cfg, cfg.Validate()
}

func openPKCS11(ctx context.Context, v plugin.Values) (core.KeyProvider, error) {
	cfg, err := pkcs11Config(v)
	if err != nil {
		return nil, err
	}
	pin, hasPIN := v.Secret("pin")
	pinFile := v.String("pin_file")
	switch {
	case hasPIN && pinFile != "":
		return nil, fmt.Errorf("pkcs11: config: give the PIN as pin (pin_env) or as pin_file, not both: %w", core.ErrMalformed)
	case pinFile != "":
		cfg.PIN, err = pkcs11.ReadPINFile(pinFile)
		if err != nil {
			return nil, err
		}
	case hasPIN:
		cfg.PIN = bytes.Clone(pin)
	default:
		what := pkcs11Desc(cfg)
		return nil, &plugin.NeedSecretError{Attribute: "pin", For: what,
			What: fmt.Sprintf("pkcs11: %s: no user PIN given (pin = env(\"VAR\"), pin_env or pin_file)", what)}
	}
	p, err := pkcs11.New(ctx, cfg)
	clear(cfg.PIN) // New keeps its own copy
	if err != nil {
		return nil, err
	}
	return pkcs11Provider{p}, nil
}

// pkcs11Desc names the token and key for messages and prompts.
func pkcs11Desc(cfg pkcs11.Config) string {
	tok := "token"
	switch {
	case cfg.TokenLabel != "":
		tok = fmt.Sprintf("token %q", cfg.TokenLabel)
	case cfg.TokenSerial != "":
		tok = fmt.Sprintf("token with serial %q", cfg.TokenSerial)
	case cfg.Slot != nil:
		tok = fmt.Sprintf("token in slot %d", *cfg.Slot)
	}
	return fmt.Sprintf("%s, key %q", tok, cfg.KeyLabel)
}

// Version states that pkcs11Provider reports in plugin.VersionInfo.State.
const (
	// pkcs11Enabled: an AES-256 key object, usable for unwrap (and for wrap
	// if current).
	pkcs11Enabled = "enabled"
	// pkcs11Unusable: a key object with the label that is not an AES-256
	// key; listed, never used.
	pkcs11Unusable = "unusable"
	// pkcs11Ambiguous: several key objects share the label and CKA_ID.
	pkcs11Ambiguous = "ambiguous"
)

// pkcs11Provider adds plugin.VersionAdmin (the `keyctl kek` commands) to
// the pkcs11 provider: list and destroy. PKCS#11 has no portable way to
// disable a key without destroying it, so disable and enable are refused.
type pkcs11Provider struct{ *pkcs11.Provider }

func (p pkcs11Provider) Versions(ctx context.Context) (string, []plugin.VersionInfo, error) {
	vs, err := p.Provider.Versions(ctx)
	if err != nil {
		return "", nil, err
	}
	out := make([]plugin.VersionInfo, len(vs))
	for i, v := range vs {
		st := pkcs11Enabled
		switch {
		case v.Objects > 1:
			st = pkcs11Ambiguous
		case !v.Usable:
			st = pkcs11Unusable
		}
		// PKCS#11 records no creation time (CKA_START_DATE is optional
		// and seldom set), so Created stays zero.
		out[i] = plugin.VersionInfo{Version: v.Version, State: st, Current: v.Current}
	}
	return p.Location(), out, nil
}

func (p pkcs11Provider) SetVersionState(ctx context.Context, version, state string) error {
	switch state {
	case "destroyed":
		return p.DestroyVersion(ctx, version)
	case "disabled", "enabled":
		return fmt.Errorf("pkcs11 key %s, version %s: cannot be %s: PKCS#11 has no portable way to disable a key without destroying it (rewrap with `keyctl rewrap`, then `keyctl kek destroy %s --yes`): %w",
			p.Ref().KeyID, version, state, version, core.ErrUnsupported)
	}
	return fmt.Errorf("unknown version state %q: %w", state, core.ErrMalformed)
}

var _ plugin.VersionAdmin = pkcs11Provider{}
