//go:build cgo

package builtin_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/core/providertest"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/plugin/builtin"
	"github.com/keyctl/keyctl/providers/pkcs11"
	softhsmtest "github.com/keyctl/keyctl/softhsm-test"
)

// serveEnv, when set in the environment of this test binary, makes
// TestPKCS11ServeHelper serve that built-in provider: the plugin tests
// re-execute the test binary as the provider plugin (as plugin/ does with
// its TestMain; this package has none, so the helper is a test function).
const serveEnv = "KEYCTL_BUILTIN_TEST_SERVE"

// TestPKCS11ServeHelper is not a test: it is the plugin process of the
// tests below.
func TestPKCS11ServeHelper(t *testing.T) {
	typ := os.Getenv(serveEnv)
	if typ == "" {
		t.Skip("plugin process of the pkcs11 tests, not a test")
	}
	if err := builtin.Serve(typ); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(1)
}

// serveCommand runs this test binary as the plugin of provider typ. The
// child inherits the environment, so SOFTHSM2_CONF of the test's throwaway
// setup (set by softhsmtest.Setup) is the one the plugin's C_Initialize
// reads.
func serveCommand(typ string) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestPKCS11ServeHelper$")
		cmd.Env = append(os.Environ(), serveEnv+"="+typ)
		return cmd
	}
}

const hsmToken = "keyctl-plugin"

// hsm is one throwaway SoftHSM2 setup with one token.
type hsm struct {
	*softhsmtest.Env
	serial string
}

func newHSM(t *testing.T) *hsm {
	t.Helper()
	e := softhsmtest.Setup(t)
	softhsmtest.RequireTool(t, "pkcs11-tool")
	return &hsm{Env: e, serial: e.InitToken(t, hsmToken, softhsmtest.UserPIN)}
}

// keygen makes a KEK's first version (CKA_ID 00000001) with pkcs11-tool,
// as an operator would.
func (h *hsm) keygen(t *testing.T, label string) {
	t.Helper()
	h.Keygen(t, hsmToken, softhsmtest.UserPIN, label, softhsmtest.KeyOptions{ID: "00000001"})
}

// values returns the attributes of a pkcs11 block for key label.
func (h *hsm) values(label string) plugin.Values {
	return plugin.Values{
		"module":      {Str: h.Module},
		"token_label": {Str: hsmToken},
		"pin":         {Secret: []byte(softhsmtest.UserPIN)},
		"key_label":   {Str: label},
	}
}

func startPKCS11(t *testing.T, v plugin.Values) (*plugin.Client, error) {
	t.Helper()
	c, err := plugin.Start(context.Background(), plugin.ClientConfig{
		Name:    "hsm",
		Type:    pkcs11.Type,
		Command: serveCommand(pkcs11.Type),
		Schema:  builtin.PKCS11.Schema,
		Values:  v,
		Logger:  hclog.NewNullLogger(),
	})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func mustStart(t *testing.T, v plugin.Values) *plugin.Client {
	t.Helper()
	c, err := startPKCS11(t, v)
	if err != nil {
		t.Fatalf("start pkcs11 plugin: %v", err)
	}
	return c
}

// TestPKCS11ConformanceThroughPlugin runs the conformance suite against
// SoftHSM2 through the plugin bridge, once per mechanism. Each provider the
// harness makes is a fresh key label on one token, made by pkcs11-tool.
func TestPKCS11ConformanceThroughPlugin(t *testing.T) {
	for _, mech := range []string{pkcs11.MechanismGCM, pkcs11.MechanismKWP} {
		t.Run(mech, func(t *testing.T) {
			h := newHSM(t)
			n := 0
			newProvider := func(t *testing.T) core.KeyProvider {
				n++
				label := fmt.Sprintf("conformance-%d", n)
				h.keygen(t, label)
				v := h.values(label)
				v["mechanism"] = plugin.Value{Str: mech}
				v["sessions"] = plugin.Value{Num: 2}
				return mustStart(t, v)
			}
			providertest.Run(t, providertest.Harness{New: newProvider, Other: newProvider})
		})
	}
}

// TestPKCS11SelectorsThroughPlugin opens the same key by token label, by
// serial and by slot (reading the slot id from the token), and with the PIN
// from a PIN file: all name the same KEK.
func TestPKCS11SelectorsThroughPlugin(t *testing.T) {
	h := newHSM(t)
	h.keygen(t, "sel")
	ctx := context.Background()
	byLabel := mustStart(t, h.values("sel"))
	dek, _ := core.NewDEK()
	st, err := byLabel.WrapKey(ctx, dek, core.Context{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if want := hsmToken + "/sel"; st.KeyID != want || st.KeyVersion != "00000001" {
		t.Fatalf("stanza %s version %s, want %s version 00000001", st.KeyID, st.KeyVersion, want)
	}

	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(softhsmtest.UserPIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bySerial := h.values("sel")
	delete(bySerial, "token_label")
	delete(bySerial, "pin")
	bySerial["token_serial"] = plugin.Value{Str: h.serial}
	bySerial["pin_file"] = plugin.Value{Str: pinFile}

	bySlot := h.values("sel")
	delete(bySlot, "token_label")
	bySlot["slot"] = plugin.Value{Num: float64(slotOf(t, h))}

	for name, v := range map[string]plugin.Values{"serial+pin_file": bySerial, "slot": bySlot} {
		c := mustStart(t, v)
		if c.Ref() != byLabel.Ref() {
			t.Errorf("%s: ref %v, want %v", name, c.Ref(), byLabel.Ref())
		}
		got, err := c.UnwrapKey(ctx, st, core.Context{"a": "b"})
		if err != nil || !got.Equal(dek) {
			t.Errorf("%s: unwrap: %v", name, err)
		}
		c.Close()
	}
}

// slotOf reads the slot id of the test token from softhsm2-util.
func slotOf(t *testing.T, h *hsm) uint {
	t.Helper()
	out := h.Run(t, "softhsm2-util", "--show-slots")
	var slot uint
	have := false
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if s, ok := strings.CutPrefix(line, "Slot "); ok && s != "info:" {
			_, err := fmt.Sscan(s, &slot)
			have = err == nil
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Label" && strings.TrimSpace(v) == hsmToken && have {
			return slot
		}
	}
	t.Fatalf("no slot for token %q in:\n%s", hsmToken, out)
	return 0
}

// TestPKCS11VersionsThroughPlugin drives plugin.VersionAdmin (the `keyctl
// kek` commands): list, destroy an old version, refuse the current one,
// and refuse disable/enable with core.ErrUnsupported.
func TestPKCS11VersionsThroughPlugin(t *testing.T) {
	h := newHSM(t)
	h.keygen(t, "kek")
	c := mustStart(t, h.values("kek"))
	ctx := context.Background()
	dek, _ := core.NewDEK()
	old, err := c.WrapKey(ctx, dek, nil)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := c.RotateKey(ctx)
	if err != nil || v2 != "00000002" {
		t.Fatalf("rotate: %q %v", v2, err)
	}
	loc, vs, err := c.Versions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(loc, hsmToken) || len(vs) != 2 || vs[0].Version != "00000001" || vs[0].Current ||
		vs[1].Version != "00000002" || !vs[1].Current || vs[0].State != "enabled" || vs[1].State != "enabled" {
		t.Fatalf("versions at %q: %+v", loc, vs)
	}
	for _, state := range []string{"disabled", "enabled"} {
		err := c.SetVersionState(ctx, "00000001", state)
		if !errors.Is(err, core.ErrUnsupported) || !strings.Contains(err.Error(), "PKCS#11 has no portable way to disable") {
			t.Errorf("%s: %v", state, err)
		}
	}
	if err := c.SetVersionState(ctx, "00000002", "destroyed"); !errors.Is(err, core.ErrFailedPrecondition) {
		t.Errorf("destroy current: %v", err)
	}
	if err := c.SetVersionState(ctx, "0000000a", "destroyed"); !errors.Is(err, core.ErrKeyNotFound) {
		t.Errorf("destroy unknown: %v", err)
	}
	// Old wraps open until the version is destroyed, then give ErrKeyNotFound.
	if got, err := c.UnwrapKey(ctx, old, nil); err != nil || !got.Equal(dek) {
		t.Fatalf("unwrap under version 1 after rotate: %v", err)
	}
	if err := c.SetVersionState(ctx, "00000001", "destroyed"); err != nil {
		t.Fatalf("destroy version 1: %v", err)
	}
	if _, err := c.UnwrapKey(ctx, old, nil); !errors.Is(err, core.ErrKeyNotFound) {
		t.Fatalf("unwrap under a destroyed version: %v", err)
	}
	if _, vs, _ := c.Versions(ctx); len(vs) != 1 || vs[0].Version != "00000002" {
		t.Fatalf("versions after destroy: %+v", vs)
	}
}

// TestPKCS11ErrorsThroughPlugin checks that the provider's failures at
// Configure cross the plugin boundary with their sentinels, name the token
// and key, and never contain the PIN.
func TestPKCS11ErrorsThroughPlugin(t *testing.T) {
	h := newHSM(t)
	h.keygen(t, "kek")
	h.Keygen(t, hsmToken, softhsmtest.UserPIN, "twins", softhsmtest.KeyOptions{ID: "01"})
	h.Keygen(t, hsmToken, softhsmtest.UserPIN, "twins", softhsmtest.KeyOptions{ID: "01"})

	const wrongPIN = "wrong-pin-5e2b"
	for _, c := range []struct {
		name  string
		edit  func(v plugin.Values)
		want  error
		words []string
	}{
		{"wrong PIN", func(v plugin.Values) { v["pin"] = plugin.Value{Secret: []byte(wrongPIN)} }, core.ErrPermission, []string{hsmToken, "PIN"}},
		{"missing key", func(v plugin.Values) { v["key_label"] = plugin.Value{Str: "nope"} }, core.ErrKeyNotFound, []string{hsmToken, "nope"}},
		{"ambiguous label", func(v plugin.Values) { v["key_label"] = plugin.Value{Str: "twins"} }, core.ErrFailedPrecondition, []string{hsmToken, "twins"}},
		{"missing token", func(v plugin.Values) { v["token_label"] = plugin.Value{Str: "no-such-token"} }, core.ErrKeyNotFound, []string{"no-such-token"}},
		{"missing module", func(v plugin.Values) { v["module"] = plugin.Value{Str: "/nonexistent/libp11.so"} }, core.ErrUnavailable, []string{"/nonexistent/libp11.so"}},
		{"unsupported mechanism name", func(v plugin.Values) { v["mechanism"] = plugin.Value{Str: "des"} }, core.ErrMalformed, []string{"des"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := h.values("kek")
			c.edit(v)
			_, err := startPKCS11(t, v)
			if !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
			msg := err.Error()
			for _, w := range c.words {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not name %q", msg, w)
				}
			}
			if strings.Contains(msg, wrongPIN) || strings.Contains(msg, softhsmtest.UserPIN) || strings.Contains(msg, "\n") {
				t.Errorf("error holds the PIN or a line break: %q", msg)
			}
		})
	}
}
