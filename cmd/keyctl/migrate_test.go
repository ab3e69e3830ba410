package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/awskms"
	"github.com/keyctl/keyctl/providers/awskms/awskmstest"
	"github.com/keyctl/keyctl/providers/localfile"
	"github.com/keyctl/keyctl/providers/pkcs11"
	softhsmtest "github.com/keyctl/keyctl/softhsm-test"
	"github.com/keyctl/keyctl/store/sqlstore"
)

// The operator's migration of a keyset between vaults (issue 6, "Done
// when"): a SQLite keyset of a few hundred DEKs, and field values encrypted
// with `keyctl encrypt`, move from the local key file to SoftHSM2, from
// there to the KMS emulator, and back to the key file, with nothing but
// provider blocks added to keyctl.hcl and `keyctl rewrap --keyset`.
// After every step each DEK must open to exactly its original bytes with
// only the new vault at hand, the earlier ciphertexts must decrypt with a
// configuration that names only the new vault, and `keyctl keyset list`
// must show every DEK's wraps where the step put them.

const (
	migDEKs   = 300
	migToken  = "keyctl-mig"
	migKEK    = "keyset-kek"
	migPINEnv = "KEYCTL_TEST_MIG_PIN"
)

type migEnv struct {
	dir, db string
	blocks  map[string]string // provider blocks by name
	// The three vaults, opened in-process, and the label of their current
	// KEK version ("provider:key-id@version").
	vault map[string]core.KeyProvider
	label map[string]string
	deks  map[uint32]core.DEK
	ids   []uint32 // sorted
}

// config writes keyctl-NAME.hcl naming the given providers (the first is
// the keyring primary, the others decrypt-only) and the SQLite keyset.
func (m *migEnv) config(t *testing.T, name string, providers ...string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range providers {
		b.WriteString(m.blocks[p])
	}
	q := make([]string, len(providers)-1)
	for i, p := range providers[1:] {
		q[i] = fmt.Sprintf("%q", p)
	}
	fmt.Fprintf(&b, "keyring {\n  primary      = %q\n  decrypt_only = [%s]\n}\n\nkeyset {\n  sqlite = %q\n}\n",
		providers[0], strings.Join(q, ", "), m.db)
	path := filepath.Join(m.dir, "keyctl-"+name+".hcl")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// listWraps returns every DEK's wraps as `keyctl --json keyset list` shows
// them with cfg, "provider:key-id@version" joined by ",", by DEK id.
func listWraps(t *testing.T, cfg string) map[string]string {
	t.Helper()
	out, _ := keyctlOK(t, nil, "-c", cfg, "--json", "keyset", "list")
	var l struct {
		DEKs []struct {
			ID    string          `json:"id"`
			Wraps []inspectedWrap `json:"wraps"`
		} `json:"deks"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("keyset list --json: %v", err)
	}
	got := make(map[string]string, len(l.DEKs))
	for _, d := range l.DEKs {
		var w []string
		for _, s := range d.Wraps {
			w = append(w, s.Provider+":"+s.KeyID+"@"+s.KeyVersion)
		}
		got[d.ID] = strings.Join(w, ",")
	}
	return got
}

// check verifies the keyset after a step: keyset list (with cfg) shows
// every DEK with exactly the wraps of the vaults in want, in that order;
// each DEK opens in-process with only the vault opener to its original
// bytes; and the field values encrypted before decrypt with onlyCfg, a
// configuration naming only that vault.
func (m *migEnv) check(t *testing.T, step, cfg, opener, onlyCfg string, cts, plains []string, want ...string) {
	t.Helper()
	labels := make([]string, len(want))
	for i, v := range want {
		labels[i] = m.label[v]
	}
	wantWraps := strings.Join(labels, ",")
	got := listWraps(t, cfg)
	if len(got) != len(m.ids) {
		t.Fatalf("%s: keyset list shows %d DEKs, want %d", step, len(got), len(m.ids))
	}
	for _, id := range m.ids {
		w, ok := got[fmt.Sprintf("%08x", id)]
		if !ok {
			t.Fatalf("%s: DEK %08x missing from keyset list", step, id)
		}
		if w != wantWraps {
			t.Fatalf("%s: DEK %08x has wraps %s, want %s", step, id, w, wantWraps)
		}
	}

	ctx := context.Background()
	ring, err := core.NewKeyring(m.vault[opener])
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlstore.OpenSQLite(ctx, m.db, sqlstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ks, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.DEKs) != len(m.ids) {
		t.Fatalf("%s: store holds %d DEKs, want %d", step, len(ks.DEKs), len(m.ids))
	}
	for i := range ks.DEKs {
		e := &ks.DEKs[i]
		orig, ok := m.deks[e.ID]
		if !ok {
			t.Fatalf("%s: unknown DEK %08x", step, e.ID)
		}
		dek, err := ring.Unwrap(ctx, e.Wrapped, e.Context())
		if err != nil {
			t.Fatalf("%s: DEK %08x does not open with only %s: %v", step, e.ID, opener, err)
		}
		if !dek.Equal(orig) {
			t.Fatalf("%s: DEK %08x opens to other bytes than before", step, e.ID)
		}
		dek.Zero()
	}

	for i, ct := range cts {
		pt, _ := keyctlOK(t, []byte(ct), "-c", onlyCfg, "decrypt", "--ad", fmt.Sprintf("users/email/%d", i))
		if strings.TrimSpace(pt) != plains[i] {
			t.Fatalf("%s: value %d decrypts with only %s to another plaintext", step, i, opener)
		}
	}
	t.Logf("%s: %d DEKs under %s; %d values decrypt with only %q configured", step, len(m.ids), wantWraps, len(cts), opener)
}

// dryRun runs rewrap --keyset --dry-run with cfg and the flags and checks
// its exact report; the keyset must not change.
func (m *migEnv) dryRun(t *testing.T, cfg string, want string, flags ...string) {
	t.Helper()
	before := listWraps(t, cfg)
	args := append([]string{"-c", cfg, "rewrap", "--keyset", "--dry-run", "--progress", "none"}, flags...)
	out, _ := keyctlOK(t, nil, args...)
	if out != want {
		t.Fatalf("keyctl rewrap --keyset --dry-run %s printed\n%s\nwant\n%s", strings.Join(flags, " "), out, want)
	}
	after := listWraps(t, cfg)
	for id, w := range before {
		if after[id] != w {
			t.Fatalf("dry run %s changed DEK %s: %s -> %s", strings.Join(flags, " "), id, w, after[id])
		}
	}
}

// rewrap runs rewrap --keyset with cfg and the flags, which must report
// exactly want.
func rewrapKeyset(t *testing.T, cfg, want string, flags ...string) {
	t.Helper()
	args := append([]string{"-c", cfg, "rewrap", "--keyset", "--progress", "none"}, flags...)
	if out, _ := keyctlOK(t, nil, args...); out != want {
		t.Fatalf("keyctl rewrap --keyset %s printed %q, want %q", strings.Join(flags, " "), out, want)
	}
}

func TestKeysetMigrationBetweenVaults(t *testing.T) {
	if !pkcs11.Available {
		t.Skip("this test binary was built without cgo, so it has no PKCS#11 provider")
	}
	ctx := context.Background()
	hsm := softhsmtest.Setup(t)
	softhsmtest.RequireTool(t, "pkcs11-tool")
	hsm.InitToken(t, migToken, softhsmtest.UserPIN)
	hsm.Keygen(t, migToken, softhsmtest.UserPIN, migKEK, softhsmtest.KeyOptions{ID: "00000001"})
	t.Setenv(migPINEnv, softhsmtest.UserPIN)

	kmsKey := awskmstest.NewKeyID()
	emu := awskmstest.Start(t, awskmstest.Seed{Keys: []awskmstest.Key{{ID: kmsKey}}})
	for _, kv := range emu.Env() {
		name, v, _ := strings.Cut(kv, "=")
		t.Setenv(name, v)
	}
	t.Setenv("KEYCTL_CONFIG", "")

	m := &migEnv{dir: t.TempDir()}
	m.db = filepath.Join(m.dir, "keyset.db")
	if code, _, stderr := runKeyctl(nil, "init", "--dir", m.dir, "--key-id", "local"); code != 0 {
		t.Fatalf("keyctl init: %s", stderr)
	}
	m.blocks = map[string]string{
		"local": "provider \"localfile\" \"local\" {\n  key_file = \"kek.json\"\n}\n\n",
		"hsm": fmt.Sprintf("provider \"pkcs11\" \"hsm\" {\n  module      = %q\n  token_label = %q\n  pin_env     = %q\n  key_label   = %q\n}\n\n",
			hsm.Module, migToken, migPINEnv, migKEK),
		"kms": fmt.Sprintf("provider \"awskms\" \"kms\" {\n  key_id   = %q\n  region   = %q\n  endpoint = %q\n}\n\n",
			kmsKey, awskmstest.Region, emu.Endpoint),
	}

	// The three vaults in-process, to check every DEK without keyctl.
	lp, err := localfile.Open(filepath.Join(m.dir, "kek.json"), localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hp, err := pkcs11.New(ctx, pkcs11.Config{Module: hsm.Module, TokenLabel: migToken, PIN: []byte(softhsmtest.UserPIN), KeyLabel: migKEK})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hp.Close() })
	kp, err := awskms.New(ctx, awskms.Config{KeyID: kmsKey, Region: awskmstest.Region, Endpoint: emu.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	m.vault = map[string]core.KeyProvider{"local": lp, "hsm": hp, "kms": kp}
	m.label = map[string]string{
		"local": "localfile:local@1",
		"hsm":   "pkcs11:" + migToken + "/" + migKEK + "@00000001",
		"kms":   "awskms:" + kmsKey + "@" + awskmstest.KeyARN(kmsKey),
	}

	// The keyset on the key file: migDEKs DEKs made in-process, then three
	// values encrypted with keyctl, each under a new primary DEK.
	localOnly := m.config(t, "local", "local")
	ring, err := core.NewKeyring(lp)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlstore.OpenSQLite(ctx, m.db, sqlstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(ctx, func(ks *core.Keyset) error {
		for range migDEKs {
			if _, err := ks.AddDEK(ctx, ring, time.Now()); err != nil {
				return err
			}
		}
		return nil
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	var cts, plains []string
	for i := range 3 {
		if i > 0 {
			keyctlOK(t, nil, "-c", localOnly, "keyset", "rotate")
		}
		plains = append(plains, fmt.Sprintf("user%d-%d@example.com", i, rand.IntN(1_000_000)))
		ct, _ := keyctlOK(t, []byte(plains[i]), "-c", localOnly, "encrypt", "--ad", fmt.Sprintf("users/email/%d", i))
		cts = append(cts, strings.TrimSpace(ct))
	}
	// Record every DEK, opened in-process from the key file.
	st, err = sqlstore.OpenSQLite(ctx, m.db, sqlstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := st.Load(ctx)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	m.deks = map[uint32]core.DEK{}
	for i := range ks.DEKs {
		e := &ks.DEKs[i]
		dek, err := ring.Unwrap(ctx, e.Wrapped, e.Context())
		if err != nil {
			t.Fatal(err)
		}
		m.deks[e.ID] = dek
		m.ids = append(m.ids, e.ID)
	}
	t.Cleanup(func() {
		for _, d := range m.deks {
			d.Zero()
		}
	})
	slices.Sort(m.ids)
	n := len(m.ids)
	if n != migDEKs+2 {
		t.Fatalf("keyset holds %d DEKs, want %d", n, migDEKs+2)
	}
	m.check(t, "start", localOnly, "local", localOnly, cts, plains, "local")

	// 1. Key file -> SoftHSM2: an hsm block is added; the keyring is as it was.
	localHSM := m.config(t, "local-hsm", "local", "hsm")
	hsmOnly := m.config(t, "hsm", "hsm")
	m.dryRun(t, localHSM, fmt.Sprintf("would rewrap %d, already current 0\n  would replace %d wrap(s) under %s\n  new wraps under %s\n",
		n, n, m.label["local"], m.label["hsm"]), "--to", "hsm")
	rewrapKeyset(t, localHSM, fmt.Sprintf("rewrapped %d, already current 0, failed 0\n", n), "--to", "hsm")
	m.check(t, "local -> hsm", localHSM, "hsm", hsmOnly, cts, plains, "hsm")
	// Rerun: nothing left to do.
	rewrapKeyset(t, localHSM, fmt.Sprintf("rewrapped 0, already current %d, failed 0\n", n), "--to", "hsm")

	// 2. SoftHSM2 -> KMS: the HSM is now the primary, a kms block is added.
	hsmKMS := m.config(t, "hsm-kms", "hsm", "kms")
	kmsOnly := m.config(t, "kms", "kms")
	m.dryRun(t, hsmKMS, fmt.Sprintf("would rewrap %d, already current 0\n  would replace %d wrap(s) under %s\n  new wraps under %s\n",
		n, n, m.label["hsm"], m.label["kms"]), "--to", "kms")
	rewrapKeyset(t, hsmKMS, fmt.Sprintf("rewrapped %d, already current 0, failed 0\n", n), "--to", "kms")
	m.check(t, "hsm -> kms", hsmKMS, "kms", kmsOnly, cts, plains, "kms")

	// 3. Back to the key file, gradually: --add local, then --drop kms.
	kmsLocal := m.config(t, "kms-local", "kms", "local")
	m.dryRun(t, kmsLocal, fmt.Sprintf("would rewrap %d, already current 0\n  new wraps under %s\n", n, m.label["local"]), "--add", "local")
	rewrapKeyset(t, kmsLocal, fmt.Sprintf("rewrapped %d, already current 0, failed 0\n", n), "--add", "local")
	m.check(t, "kms + local", kmsLocal, "local", localOnly, cts, plains, "kms", "local")
	m.check(t, "kms + local", kmsLocal, "kms", kmsOnly, cts, plains, "kms", "local")
	m.dryRun(t, kmsLocal, fmt.Sprintf("would rewrap %d, already current 0\n  would replace %d wrap(s) under %s\n", n, n, m.label["kms"]), "--drop", "kms")
	rewrapKeyset(t, kmsLocal, fmt.Sprintf("rewrapped %d, already current 0, failed 0\n", n), "--drop", "kms")
	m.check(t, "local again", kmsLocal, "local", localOnly, cts, plains, "local")

	// The KMS wraps are gone: a configuration with only KMS opens nothing.
	if code, _, stderr := runKeyctl([]byte(cts[0]), "-c", kmsOnly, "decrypt", "--ad", "users/email/0"); code == 0 {
		t.Fatal("decrypt with only KMS configured succeeded after --drop kms")
	} else {
		t.Logf("with only KMS after the drop: exit %d: %s", code, strings.TrimSpace(stderr))
	}
}
