//go:build unix

package localfile

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
)

// Known test keys: bytes 0..31, 32..63, 64..95.
const (
	k1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	k2 = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
	k3 = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="
)

func rawKey(t testing.TB, b64 string) []byte {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(k) != 32 {
		t.Fatalf("bad test key %q", b64)
	}
	return k
}

// ver renders one version entry of a hand-written key file; key "" omits it.
func ver(v, state, key string) string {
	s := fmt.Sprintf(`{"version": %q, "state": %q, "created": "2025-01-02T03:04:05Z"`, v, state)
	if key != "" {
		s += fmt.Sprintf(`, "key": %q`, key)
	}
	return s + "}"
}

// plainFile renders an unprotected key file by hand, in the documented form.
func plainFile(keyID, current string, versions ...string) string {
	return fmt.Sprintf(`{"format": "keyctl-localfile/1", "key_id": %q, "current": %q, "versions": [%s]}`,
		keyID, current, strings.Join(versions, ", "))
}

func writeKeyFile(t testing.TB, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kek.json")
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask
		t.Fatal(err)
	}
	return path
}

func create(t testing.TB, opts CreateOptions) (*Provider, string) {
	t.Helper()
	if opts.KeyID == "" {
		opts.KeyID = "test-kek"
	}
	path := filepath.Join(t.TempDir(), "kek.json")
	p, err := Create(path, opts)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return p, path
}

func open(t testing.TB, path string, opts Options) *Provider {
	t.Helper()
	p, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return p
}

func newDEK(t testing.TB) core.DEK {
	t.Helper()
	d, err := core.NewDEK()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var (
	bg = context.Background()
	ec = core.Context{"table": "users", "column": "email"}
)

func mustWrap(t testing.TB, p *Provider, dek core.DEK, ec core.Context) core.Stanza {
	t.Helper()
	s, err := p.WrapKey(bg, dek, ec)
	if err != nil {
		t.Fatalf("WrapKey: %v", err)
	}
	return s
}

func mustUnwrap(t testing.TB, p *Provider, s core.Stanza, ec core.Context, want core.DEK) {
	t.Helper()
	got, err := p.UnwrapKey(bg, s, ec)
	if err != nil {
		t.Fatalf("UnwrapKey(version %q): %v", s.KeyVersion, err)
	}
	if !got.Equal(want) {
		t.Fatalf("UnwrapKey(version %q) returned another DEK", s.KeyVersion)
	}
}

func constPass(s string) func() ([]byte, error) {
	return func() ([]byte, error) { return []byte(s), nil }
}

// cheapSealer returns a sealer with low scrypt cost, for tests and fuzz
// seeds that must stay fast.
func cheapSealer(t testing.TB, pass string) *sealer {
	t.Helper()
	s, err := newSealer([]byte(pass), kdfParams{salt: bytes.Repeat([]byte{7}, 16), n: minScryptN, r: 8, p: 1})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sealedFile renders a protected key file whose sealed plaintext is inner.
func sealedFile(t testing.TB, s *sealer, keyID string, inner []byte) string {
	t.Helper()
	sealed := make([]byte, nonceSize)
	sealed = s.aead.Seal(sealed, sealed[:nonceSize], inner, sealAD(keyID))
	return fmt.Sprintf(`{"format": "keyctl-localfile/1", "key_id": %q, "kdf": {"name": "scrypt", "salt": %q, "n": %d, "r": %d, "p": %d}, "sealed": %q}`,
		keyID, base64.StdEncoding.EncodeToString(s.kdf.salt), s.kdf.n, s.kdf.r, s.kdf.p, base64.StdEncoding.EncodeToString(sealed))
}

func TestCreateOpenRoundTrip(t *testing.T) {
	t.Parallel()
	p, path := create(t, CreateOptions{KeyID: "dev-kek"})
	if p.Path() != path {
		t.Errorf("Path() = %q, want %q", p.Path(), path)
	}
	if want := (core.KeyRef{Provider: "localfile", KeyID: "dev-kek"}); p.Ref() != want {
		t.Errorf("Ref() = %v, want %v", p.Ref(), want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("created with mode %04o, want 0600", fi.Mode().Perm())
	}
	// The file is in the documented JSON form.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Format   string `json:"format"`
		KeyID    string `json:"key_id"`
		Current  string `json:"current"`
		Versions []struct {
			Version, State, Created, Key string
		} `json:"versions"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Format != "keyctl-localfile/1" || doc.KeyID != "dev-kek" || doc.Current != "1" || len(doc.Versions) != 1 {
		t.Fatalf("unexpected file content:\n%s", raw)
	}
	v := doc.Versions[0]
	if v.Version != "1" || v.State != "enabled" {
		t.Errorf("version entry %+v", v)
	}
	if _, err := time.Parse(time.RFC3339, v.Created); err != nil || !strings.HasSuffix(v.Created, "Z") {
		t.Errorf("created %q is not RFC 3339 UTC", v.Created)
	}
	if k, err := base64.StdEncoding.DecodeString(v.Key); err != nil || len(k) != 32 {
		t.Errorf("key is not base64 of 32 bytes")
	}

	dek := newDEK(t)
	s := mustWrap(t, p, dek, ec)
	if s.Provider != Type || s.KeyID != "dev-kek" || s.KeyVersion != "1" || s.Algorithm != core.AlgAES256GCM || len(s.Data) != 60 {
		t.Errorf("stanza %+v", s)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("stanza invalid: %v", err)
	}
	mustUnwrap(t, p, s, ec, dek)

	q := open(t, path, Options{Passphrase: func() ([]byte, error) {
		t.Error("passphrase asked for an unprotected file")
		return nil, errors.New("no")
	}})
	if q.Ref() != p.Ref() {
		t.Errorf("reopened Ref %v, want %v", q.Ref(), p.Ref())
	}
	mustUnwrap(t, q, s, ec, dek)
	if got, want := q.Versions(), p.Versions(); !slices.Equal(got, want) {
		t.Errorf("Versions after reopen %v, want %v", got, want)
	}
	if vs := q.Versions(); len(vs) != 1 || !vs[0].Current || vs[0].State != StateEnabled || vs[0].Version != "1" {
		t.Errorf("Versions() = %+v", vs)
	}
}

// TestHandWrittenFile opens a key file written by hand in the documented
// form, as test helpers elsewhere do, and checks the wrap format
// independently of the provider's code.
func TestHandWrittenFile(t *testing.T) {
	t.Parallel()
	path := writeKeyFile(t, plainFile("golden", "2", ver("1", "disabled", k1), ver("2", "enabled", k2), ver("3", "destroyed", "")), 0o600)
	p := open(t, path, Options{})
	if v, _ := p.CurrentVersion(bg); v != "2" {
		t.Fatalf("current %q, want 2", v)
	}
	want := []VersionInfo{
		{Version: "1", State: StateDisabled, Created: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
		{Version: "2", State: StateEnabled, Created: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Current: true},
		{Version: "3", State: StateDestroyed, Created: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
	}
	if got := p.Versions(); !slices.Equal(got, want) {
		t.Fatalf("Versions() = %+v\nwant %+v", got, want)
	}

	// Seal a DEK by hand with key 2 and the documented associated data.
	dek := core.DEK(bytes.Repeat([]byte{0xd0}, 32))
	ctx := core.Context{"b": "2", "a": "1"}
	var ad []byte
	for _, f := range []string{"keyctl-localfile/1 wrap", "golden", "2", string(ctx.Canonical())} {
		ad = binary.BigEndian.AppendUint32(ad, uint32(len(f)))
		ad = append(ad, f...)
	}
	block, _ := aes.NewCipher(rawKey(t, k2))
	gcm, _ := cipher.NewGCM(block)
	nonce := bytes.Repeat([]byte{0x42}, 12)
	data := gcm.Seal(append([]byte(nil), nonce...), nonce, dek, ad)
	s := core.Stanza{Provider: "localfile", KeyID: "golden", KeyVersion: "2", Algorithm: core.AlgAES256GCM, Data: data}
	mustUnwrap(t, p, s, ctx, dek)

	// And the provider's own wraps open by hand.
	s2 := mustWrap(t, p, dek, ctx)
	got, err := gcm.Open(nil, s2.Data[:12], s2.Data[12:], ad)
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("provider wrap does not follow the documented format: %v", err)
	}
}

func TestImportKeys(t *testing.T) {
	t.Parallel()
	keys := [][]byte{rawKey(t, k1), rawKey(t, k2), rawKey(t, k3)}
	orig := slices.Clone(keys[2])
	p, path := create(t, CreateOptions{KeyID: "imported", ImportKeys: keys})
	if !bytes.Equal(keys[2], orig) {
		t.Fatal("Create modified the caller's key slice")
	}
	if v, _ := p.CurrentVersion(bg); v != "3" {
		t.Fatalf("current %q, want 3", v)
	}
	raw, _ := os.ReadFile(path)
	for i, k := range []string{k1, k2, k3} {
		if !bytes.Contains(raw, []byte(fmt.Sprintf(`"version": "%d", "state": "enabled"`, i+1))) || !bytes.Contains(raw, []byte(k)) {
			t.Errorf("file lacks imported version %d:\n%s", i+1, raw)
		}
	}
}

func TestCreateRefusesExisting(t *testing.T) {
	t.Parallel()
	path := writeKeyFile(t, "precious", 0o600)
	_, err := Create(path, CreateOptions{KeyID: "x"})
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create over an existing file: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatal("Create changed an existing file")
	}
	assertNoTempFiles(t, filepath.Dir(path), "kek.json")
}

func TestCreateBadOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts CreateOptions
	}{
		{"no key id", CreateOptions{}},
		{"control character in key id", CreateOptions{KeyID: "a\nb"}},
		{"key id too long", CreateOptions{KeyID: strings.Repeat("k", core.MaxKeyIDLen+1)}},
		{"short import key", CreateOptions{KeyID: "x", ImportKeys: [][]byte{make([]byte, 16)}}},
		{"long import key", CreateOptions{KeyID: "x", ImportKeys: [][]byte{make([]byte, 33)}}},
		{"empty import list", CreateOptions{KeyID: "x", ImportKeys: [][]byte{}}},
		{"empty passphrase", CreateOptions{KeyID: "x", Passphrase: []byte{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kek.json")
			if tc.opts.KeyID == "" && tc.name != "no key id" {
				tc.opts.KeyID = "x"
			}
			_, err := Create(path, tc.opts)
			if !errors.Is(err, core.ErrMalformed) {
				t.Fatalf("Create: %v, want ErrMalformed", err)
			}
			if _, serr := os.Stat(path); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatal("a failed Create left a file behind")
			}
		})
	}
}

func TestOpenRefusesLoosePermissions(t *testing.T) {
	t.Parallel()
	content := plainFile("perm", "1", ver("1", "enabled", k1))
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o606, 0o610, 0o601, 0o666} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			path := writeKeyFile(t, content, mode)
			_, err := Open(path, Options{})
			if !errors.Is(err, core.ErrPermission) {
				t.Fatalf("Open: %v, want ErrPermission", err)
			}
			msg := err.Error()
			for _, want := range []string{path, fmt.Sprintf("%04o", mode), "chmod 600 " + path} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not mention %q", msg, want)
				}
			}
		})
	}
	for _, mode := range []os.FileMode{0o600, 0o400, 0o700} {
		t.Run(fmt.Sprintf("%04o accepted", mode), func(t *testing.T) {
			open(t, writeKeyFile(t, content, mode), Options{})
		})
	}
}

func TestPassphrase(t *testing.T) {
	t.Parallel()
	keys := [][]byte{rawKey(t, k1), rawKey(t, k2)}
	p, path := create(t, CreateOptions{KeyID: "sealed", Passphrase: []byte("correct horse"), ImportKeys: keys})
	dek := newDEK(t)
	s := mustWrap(t, p, dek, ec)

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("file does not contain the keys", func(t *testing.T) {
		for _, k := range keys {
			for _, enc := range [][]byte{k, []byte(base64.StdEncoding.EncodeToString(k)), []byte(base64.RawURLEncoding.EncodeToString(k)), []byte(hex.EncodeToString(k))} {
				if bytes.Contains(raw, enc) {
					t.Fatalf("protected file contains key material:\n%s", raw)
				}
			}
		}
		for _, clear := range []string{`"versions"`, `"current"`, `"enabled"`} {
			if bytes.Contains(raw, []byte(clear)) {
				t.Errorf("protected file shows %s in clear", clear)
			}
		}
		var doc struct {
			Format string `json:"format"`
			KeyID  string `json:"key_id"`
			KDF    struct {
				Name    string `json:"name"`
				N, R, P int
			} `json:"kdf"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		if doc.Format != formatV1 || doc.KeyID != "sealed" || doc.KDF.Name != "scrypt" || doc.KDF.N != 32768 || doc.KDF.R != 8 || doc.KDF.P != 1 {
			t.Errorf("protected file header %+v", doc)
		}
	})

	calls := 0
	q := open(t, path, Options{Passphrase: func() ([]byte, error) { calls++; return []byte("correct horse"), nil }})
	if calls != 1 {
		t.Errorf("passphrase callback called %d times, want 1", calls)
	}
	mustUnwrap(t, q, s, ec, dek)

	// A rotation rewrites the sealed file without asking again.
	v, err := q.RotateKey(bg)
	if err != nil || v != "3" {
		t.Fatalf("RotateKey = %q, %v", v, err)
	}
	if err := q.DisableVersion("1"); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Errorf("passphrase callback called %d times after changes, want 1", calls)
	}
	s3 := mustWrap(t, q, dek, ec)
	r := open(t, path, Options{Passphrase: constPass("correct horse")})
	mustUnwrap(t, r, s3, ec, dek)
	mustUnwrap(t, r, s, ec, dek)
	if vs := r.Versions(); len(vs) != 3 || vs[0].State != StateDisabled || !vs[2].Current {
		t.Errorf("Versions after reopen %+v", vs)
	}
	if raw2, _ := os.ReadFile(path); bytes.Contains(raw2, []byte(k1)) || bytes.Contains(raw2, []byte(k2)) {
		t.Error("rewritten protected file contains key material")
	}

	errCallback := errors.New("no terminal")
	for _, tc := range []struct {
		name string
		opts Options
		want error
		msg  string
	}{
		{"wrong", Options{Passphrase: constPass("wrong horse")}, core.ErrPermission, "wrong passphrase"},
		{"missing callback", Options{}, core.ErrPermission, "passphrase"},
		{"empty", Options{Passphrase: constPass("")}, core.ErrPermission, "empty passphrase"},
		{"callback fails", Options{Passphrase: func() ([]byte, error) { return nil, errCallback }}, errCallback, "no terminal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(path, tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q should mention %q and the file", err, tc.msg)
			}
		})
	}

	t.Run("callback's slice is zeroed", func(t *testing.T) {
		var given []byte
		open(t, path, Options{Passphrase: func() ([]byte, error) {
			given = []byte("correct horse")
			return given, nil
		}})
		if !bytes.Equal(given, make([]byte, len(given))) {
			t.Error("Open did not zero the passphrase")
		}
	})

	t.Run("clear fields are bound", func(t *testing.T) {
		// Moving the sealed data under another key id breaks it.
		other := bytes.Replace(raw, []byte(`"key_id": "sealed"`), []byte(`"key_id": "sealed2"`), 1)
		path2 := writeKeyFile(t, string(other), 0o600)
		if _, err := Open(path2, Options{Passphrase: constPass("correct horse")}); !errors.Is(err, core.ErrPermission) {
			t.Fatalf("Open with a changed key_id: %v, want ErrPermission", err)
		}
	})
}

func TestRotate(t *testing.T) {
	t.Parallel()
	p, path := create(t, CreateOptions{})
	dek := newDEK(t)
	old := mustWrap(t, p, dek, ec)
	for want := 2; want <= 4; want++ {
		v, err := p.RotateKey(bg)
		if err != nil {
			t.Fatalf("RotateKey: %v", err)
		}
		if v != fmt.Sprint(want) {
			t.Fatalf("RotateKey = %q, want %d", v, want)
		}
		if cur, _ := p.CurrentVersion(bg); cur != v {
			t.Fatalf("CurrentVersion %q after rotating to %q", cur, v)
		}
		s := mustWrap(t, p, dek, ec)
		if s.KeyVersion != v {
			t.Fatalf("wrap after rotate used version %q, want %q", s.KeyVersion, v)
		}
		mustUnwrap(t, p, s, ec, dek)
		mustUnwrap(t, p, old, ec, dek)
	}
	q := open(t, path, Options{})
	mustUnwrap(t, q, old, ec, dek)
	vs := q.Versions()
	if len(vs) != 4 || !vs[3].Current || vs[3].Version != "4" {
		t.Fatalf("Versions after reopen %+v", vs)
	}
	for _, v := range vs {
		if v.State != StateEnabled {
			t.Errorf("version %s is %s after rotation, want enabled", v.Version, v.State)
		}
	}
	assertNoTempFiles(t, filepath.Dir(path), "kek.json", "kek.json.lock")
}

func TestVersionStates(t *testing.T) {
	t.Parallel()
	p, path := create(t, CreateOptions{})
	dek := newDEK(t)
	s1 := mustWrap(t, p, dek, ec)
	if _, err := p.RotateKey(bg); err != nil {
		t.Fatal(err)
	}
	s2 := mustWrap(t, p, dek, ec)

	unwrapErr := func(s core.Stanza) error {
		t.Helper()
		d, err := p.UnwrapKey(bg, s, ec)
		if err == nil && !d.Equal(dek) {
			t.Fatal("wrong DEK")
		}
		return err
	}
	steps := []struct {
		name  string
		op    func() error
		opErr error // nil: success
		s1Err error // after the op, unwrap of version 1
		state VersionState
	}{
		{"disable current refused", func() error { return p.DisableVersion("2") }, ErrCurrentVersion, nil, StateEnabled},
		{"destroy current refused", func() error { return p.DestroyVersion("2") }, ErrCurrentVersion, nil, StateEnabled},
		{"disable unknown", func() error { return p.DisableVersion("9") }, core.ErrKeyNotFound, nil, StateEnabled},
		{"enable unknown", func() error { return p.EnableVersion("x") }, core.ErrKeyNotFound, nil, StateEnabled},
		{"destroy unknown", func() error { return p.DestroyVersion("") }, core.ErrKeyNotFound, nil, StateEnabled},
		{"enable enabled is a no-op", func() error { return p.EnableVersion("1") }, nil, nil, StateEnabled},
		{"enable current is a no-op", func() error { return p.EnableVersion("2") }, nil, nil, StateEnabled},
		{"disable 1", func() error { return p.DisableVersion("1") }, nil, core.ErrKeyDisabled, StateDisabled},
		{"disable again is a no-op", func() error { return p.DisableVersion("1") }, nil, core.ErrKeyDisabled, StateDisabled},
		{"enable 1", func() error { return p.EnableVersion("1") }, nil, nil, StateEnabled},
		{"destroy 1", func() error { return p.DestroyVersion("1") }, nil, core.ErrKeyNotFound, StateDestroyed},
		{"destroy again is a no-op", func() error { return p.DestroyVersion("1") }, nil, core.ErrKeyNotFound, StateDestroyed},
		{"enable destroyed refused", func() error { return p.EnableVersion("1") }, core.ErrKeyNotFound, core.ErrKeyNotFound, StateDestroyed},
		{"disable destroyed refused", func() error { return p.DisableVersion("1") }, core.ErrKeyNotFound, core.ErrKeyNotFound, StateDestroyed},
	}
	for _, st := range steps {
		err := st.op()
		if st.opErr == nil && err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if st.opErr != nil && !errors.Is(err, st.opErr) {
			t.Fatalf("%s: error %v, want %v", st.name, err, st.opErr)
		}
		if err := unwrapErr(s1); (st.s1Err == nil) != (err == nil) || (st.s1Err != nil && !errors.Is(err, st.s1Err)) {
			t.Fatalf("%s: unwrap of version 1: %v, want %v", st.name, err, st.s1Err)
		}
		if err := unwrapErr(s2); err != nil {
			t.Fatalf("%s: unwrap of current version: %v", st.name, err)
		}
		// The file says the same as memory.
		q := open(t, path, Options{})
		if got := q.Versions()[0].State; got != st.state || p.Versions()[0].State != st.state {
			t.Fatalf("%s: version 1 is %s on disk, %s in memory; want %s", st.name, got, p.Versions()[0].State, st.state)
		}
	}
	raw, _ := os.ReadFile(path)
	if bytes.Count(raw, []byte(`"key"`)) != 1 {
		t.Errorf("destroyed key still in the file:\n%s", raw)
	}
	if !bytes.Contains(raw, []byte(`{"version": "1", "state": "destroyed", "created": "`)) {
		t.Errorf("no tombstone for version 1:\n%s", raw)
	}
	// Version numbers are not reused after a destroy.
	if v, err := p.RotateKey(bg); err != nil || v != "3" {
		t.Fatalf("RotateKey after destroy = %q, %v; want 3", v, err)
	}
	assertNoTempFiles(t, filepath.Dir(path), "kek.json", "kek.json.lock")
}

// TestConcurrentRotation has two Provider instances on one file rotate from
// several goroutines at once: no version may be lost or handed out twice.
func TestConcurrentRotation(t *testing.T) {
	t.Parallel()
	a, path := create(t, CreateOptions{})
	b := open(t, path, Options{})
	const goroutines, each = 6, 5
	type wrapped struct {
		s   core.Stanza
		dek core.DEK
	}
	var (
		mu      sync.Mutex
		seen    = map[string]bool{}
		wraps   []wrapped
		wg      sync.WaitGroup
		errs    = make(chan error, goroutines)
		workers = []*Provider{a, b}
	)
	for g := range goroutines {
		p := workers[g%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				v, err := p.RotateKey(bg)
				if err != nil {
					errs <- err
					return
				}
				dek, _ := core.NewDEK()
				s, err := p.WrapKey(bg, dek, ec)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if seen[v] {
					mu.Unlock()
					errs <- fmt.Errorf("version %s handed out twice", v)
					return
				}
				seen[v] = true
				wraps = append(wraps, wrapped{s, dek})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := 1 + goroutines*each
	fresh := open(t, path, Options{})
	vs := fresh.Versions()
	if len(vs) != total {
		t.Fatalf("%d versions in the file, want %d: a rotation was lost", len(vs), total)
	}
	for i, v := range vs {
		if v.Version != fmt.Sprint(i+1) || v.State != StateEnabled {
			t.Fatalf("versions[%d] = %+v", i, v)
		}
		if i > 0 && !seen[v.Version] {
			t.Fatalf("version %s in the file was not returned by any RotateKey", v.Version)
		}
	}
	if !vs[total-1].Current {
		t.Fatalf("current is not the last version: %+v", vs)
	}
	for _, w := range wraps {
		mustUnwrap(t, fresh, w.s, ec, w.dek)
		// Each instance also opens wraps made by the other (it re-reads the
		// file when it meets a version it does not know).
		mustUnwrap(t, a, w.s, ec, w.dek)
		mustUnwrap(t, b, w.s, ec, w.dek)
	}
	assertNoTempFiles(t, filepath.Dir(path), "kek.json", "kek.json.lock")
}

// TestMutationRereads checks that a change made through one instance is not
// undone by another instance that opened the file before it.
func TestMutationRereads(t *testing.T) {
	t.Parallel()
	a, path := create(t, CreateOptions{})
	if _, err := a.RotateKey(bg); err != nil {
		t.Fatal(err)
	}
	b := open(t, path, Options{})
	if err := a.DisableVersion("1"); err != nil {
		t.Fatal(err)
	}
	if v, err := b.RotateKey(bg); err != nil || v != "3" {
		t.Fatalf("b.RotateKey = %q, %v", v, err)
	}
	if got := b.Versions()[0].State; got != StateDisabled {
		t.Fatalf("b sees version 1 as %s after its own rotation, want disabled", got)
	}
	if got := open(t, path, Options{}).Versions()[0].State; got != StateDisabled {
		t.Fatalf("b's rotation undid a's disable: version 1 is %s", got)
	}
	// a did not see b's rotation yet, but opens its wraps.
	dek := newDEK(t)
	s := mustWrap(t, b, dek, nil)
	mustUnwrap(t, a, s, nil, dek)
	if cur, _ := a.CurrentVersion(bg); cur != "3" {
		t.Errorf("a's current version after re-reading is %q, want 3", cur)
	}

	// A file replaced by one with another key id is not written over.
	other := plainFile("someone-else", "1", ver("1", "enabled", k1))
	if err := os.WriteFile(path, []byte(other), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RotateKey(bg); !errors.Is(err, core.ErrKeyNotFound) {
		t.Fatalf("RotateKey on a replaced file: %v, want ErrKeyNotFound", err)
	}
	if b, _ := os.ReadFile(path); string(b) != other {
		t.Fatal("RotateKey wrote over a key file with another key id")
	}
}

func TestFailedWriteLeavesFileIntact(t *testing.T) {
	// Not parallel: it sets a package hook.
	p, path := create(t, CreateOptions{})
	before, _ := os.ReadFile(path)
	boom := errors.New("disk full")
	testHookBeforeRename = func() error { return boom }
	defer func() { testHookBeforeRename = nil }()
	for name, op := range map[string]func() error{
		"rotate": func() error { _, err := p.RotateKey(bg); return err },
	} {
		if err := op(); !errors.Is(err, boom) {
			t.Fatalf("%s: %v, want the write error", name, err)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a failed write changed the key file")
	}
	if v, _ := p.CurrentVersion(bg); v != "1" || len(p.Versions()) != 1 {
		t.Fatalf("a failed rotation changed the state in memory: current %q, %d versions", v, len(p.Versions()))
	}
	assertNoTempFiles(t, filepath.Dir(path), "kek.json", "kek.json.lock")
	// Same for Create.
	path2 := filepath.Join(t.TempDir(), "new.json")
	if _, err := Create(path2, CreateOptions{KeyID: "x"}); !errors.Is(err, boom) {
		t.Fatalf("Create: %v, want the write error", err)
	}
	assertNoTempFiles(t, filepath.Dir(path2))
}

func assertNoTempFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("directory holds %q, want %q", got, want)
	}
}

func TestLockWaitHonoursContext(t *testing.T) {
	t.Parallel()
	p, path := create(t, CreateOptions{})
	unlock, err := lockFile(bg, path+".lock")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = p.RotateKey(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("RotateKey while locked: %v, want DeadlineExceeded and ErrUnavailable", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("RotateKey waited far past its deadline")
	}
	unlock()
	if _, err := p.RotateKey(bg); err != nil {
		t.Fatalf("RotateKey after unlock: %v", err)
	}
}

func TestSymlinkedKeyFile(t *testing.T) {
	t.Parallel()
	p, path := create(t, CreateOptions{})
	dek := newDEK(t)
	s := mustWrap(t, p, dek, nil)
	link := filepath.Join(t.TempDir(), "link.json")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	q := open(t, link, Options{})
	if _, err := q.RotateKey(bg); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("rotating through a symlink replaced the symlink")
	}
	if len(open(t, path, Options{}).Versions()) != 2 {
		t.Fatal("rotation through the symlink did not reach the target")
	}
	mustUnwrap(t, q, s, nil, dek)
}

func TestWrapsDiffer(t *testing.T) {
	t.Parallel()
	p, _ := create(t, CreateOptions{})
	dek := newDEK(t)
	a, b := mustWrap(t, p, dek, ec), mustWrap(t, p, dek, ec)
	if bytes.Equal(a.Data, b.Data) || bytes.Equal(a.Data[:12], b.Data[:12]) {
		t.Fatal("two wraps of the same DEK share data or nonce")
	}
	if bytes.Contains(a.Data, dek) {
		t.Fatal("wrap contains the DEK")
	}
}

func TestWrapErrors(t *testing.T) {
	t.Parallel()
	p, _ := create(t, CreateOptions{})
	cancelled, cancel := context.WithCancel(bg)
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		dek  core.DEK
		ec   core.Context
		want error
	}{
		{"nil DEK", bg, nil, nil, core.ErrMalformed},
		{"short DEK", bg, make(core.DEK, 31), nil, core.ErrMalformed},
		{"long DEK", bg, make(core.DEK, 33), nil, core.ErrMalformed},
		{"empty context key", bg, make(core.DEK, 32), core.Context{"": "x"}, core.ErrMalformed},
		{"control character in context", bg, make(core.DEK, 32), core.Context{"k": "a\x00b"}, core.ErrMalformed},
		{"cancelled", cancelled, make(core.DEK, 32), nil, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.WrapKey(tc.ctx, tc.dek, tc.ec)
			if !errors.Is(err, tc.want) {
				t.Fatalf("WrapKey: %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), "localfile:test-kek") {
				t.Errorf("error %q does not name the provider", err)
			}
		})
	}
}

func TestUnwrapErrors(t *testing.T) {
	t.Parallel()
	p, _ := create(t, CreateOptions{})
	dek := newDEK(t)
	// Versions: 1 disabled, 2 destroyed, 3 enabled, 4 current; one wrap
	// under each of 1..3.
	var wraps []core.Stanza
	for range 3 {
		wraps = append(wraps, mustWrap(t, p, dek, ec))
		if _, err := p.RotateKey(bg); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.DisableVersion("1"); err != nil {
		t.Fatal(err)
	}
	if err := p.DestroyVersion("2"); err != nil {
		t.Fatal(err)
	}
	s1, s2, s3 := wraps[0], wraps[1], wraps[2]
	mustUnwrap(t, p, s3, ec, dek)

	mod := func(s core.Stanza, f func(*core.Stanza)) core.Stanza {
		s.Data = bytes.Clone(s.Data)
		f(&s)
		return s
	}
	cancelled, cancel := context.WithCancel(bg)
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		s    core.Stanza
		ec   core.Context
		want error
	}{
		{"other provider type", bg, mod(s3, func(s *core.Stanza) { s.Provider = "pkcs11" }), ec, core.ErrNoProvider},
		{"other key id", bg, mod(s3, func(s *core.Stanza) { s.KeyID = "other-kek" }), ec, core.ErrNoProvider},
		{"unknown version", bg, mod(s3, func(s *core.Stanza) { s.KeyVersion = "99" }), ec, core.ErrKeyNotFound},
		{"non-numeric version", bg, mod(s3, func(s *core.Stanza) { s.KeyVersion = "latest" }), ec, core.ErrKeyNotFound},
		{"empty version", bg, mod(s3, func(s *core.Stanza) { s.KeyVersion = "" }), ec, core.ErrKeyNotFound},
		{"destroyed version", bg, s2, ec, core.ErrKeyNotFound},
		{"disabled version", bg, s1, ec, core.ErrKeyDisabled},
		{"key wrap algorithm", bg, mod(s3, func(s *core.Stanza) { s.Algorithm = core.AlgAES256KWP }), ec, core.ErrUnknownAlgorithm},
		{"unknown algorithm", bg, mod(s3, func(s *core.Stanza) { s.Algorithm = 0x77 }), ec, core.ErrUnknownAlgorithm},
		{"flipped nonce bit", bg, mod(s3, func(s *core.Stanza) { s.Data[0] ^= 1 }), ec, core.ErrUnwrapFailed},
		{"flipped ciphertext bit", bg, mod(s3, func(s *core.Stanza) { s.Data[20] ^= 0x80 }), ec, core.ErrUnwrapFailed},
		{"flipped tag bit", bg, mod(s3, func(s *core.Stanza) { s.Data[59] ^= 1 }), ec, core.ErrUnwrapFailed},
		{"truncated", bg, mod(s3, func(s *core.Stanza) { s.Data = s.Data[:59] }), ec, core.ErrUnwrapFailed},
		{"nonce only", bg, mod(s3, func(s *core.Stanza) { s.Data = s.Data[:12] }), ec, core.ErrUnwrapFailed},
		{"empty data", bg, mod(s3, func(s *core.Stanza) { s.Data = nil }), ec, core.ErrUnwrapFailed},
		{"trailing byte", bg, mod(s3, func(s *core.Stanza) { s.Data = append(s.Data, 0) }), ec, core.ErrUnwrapFailed},
		{"relabelled version", bg, mod(s3, func(s *core.Stanza) { s.KeyVersion = "4" }), ec, core.ErrUnwrapFailed},
		{"other context", bg, s3, core.Context{"table": "users", "column": "phone"}, core.ErrUnwrapFailed},
		{"missing context", bg, s3, nil, core.ErrUnwrapFailed},
		{"invalid context", bg, s3, core.Context{"": ""}, core.ErrMalformed},
		{"cancelled", cancelled, s3, ec, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.UnwrapKey(tc.ctx, tc.s, tc.ec)
			if !errors.Is(err, tc.want) {
				t.Fatalf("UnwrapKey: %v, want %v", err, tc.want)
			}
			if got != nil {
				t.Error("a DEK returned with an error")
			}
			if !strings.Contains(err.Error(), "localfile:test-kek") {
				t.Errorf("error %q does not name the provider", err)
			}
			for _, other := range []error{core.ErrUnwrapFailed, core.ErrKeyNotFound, core.ErrKeyDisabled, core.ErrNoProvider, core.ErrUnknownAlgorithm} {
				if other != tc.want && errors.Is(err, other) {
					t.Errorf("error %q also wraps %v", err, other)
				}
			}
		})
	}
	// The error for a failed authentication says no more than which key.
	_, err := p.UnwrapKey(bg, mod(s3, func(s *core.Stanza) { s.Data[30] ^= 4 }), ec)
	if want := `localfile:test-kek version "3": cannot unwrap`; err == nil || err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

func TestUnwrapReturnsFreshDEK(t *testing.T) {
	t.Parallel()
	p, _ := create(t, CreateOptions{})
	dek := newDEK(t)
	s := mustWrap(t, p, dek, nil)
	a, err := p.UnwrapKey(bg, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Zero()
	mustUnwrap(t, p, s, nil, dek)
	dataBefore := bytes.Clone(s.Data)
	b, _ := p.UnwrapKey(bg, s, nil)
	b[0] ^= 0xff
	if !bytes.Equal(s.Data, dataBefore) {
		t.Fatal("the DEK aliases the stanza's data")
	}
	if len(b) != 32 || cap(b) < 32 {
		t.Fatal("bad DEK length")
	}
}

func TestRewrapKey(t *testing.T) {
	t.Parallel()
	p, _ := create(t, CreateOptions{})
	dek := newDEK(t)
	src := mustWrap(t, p, dek, ec)
	if _, err := p.RotateKey(bg); err != nil {
		t.Fatal(err)
	}
	dst, err := p.RewrapKey(bg, src, ec)
	if err != nil {
		t.Fatal(err)
	}
	if dst.KeyVersion != "2" || dst.Ref() != p.Ref() || dst.Algorithm != core.AlgAES256GCM {
		t.Fatalf("rewrapped stanza %+v", dst)
	}
	mustUnwrap(t, p, dst, ec, dek)

	foreign := src
	foreign.KeyID = "other"
	if _, err := p.RewrapKey(bg, foreign, ec); !errors.Is(err, core.ErrNoProvider) || !errors.Is(err, core.ErrUnsupported) {
		t.Errorf("RewrapKey of another Ref: %v, want ErrNoProvider and ErrUnsupported", err)
	}
	if _, err := p.RewrapKey(bg, src, core.Context{"x": "y"}); !errors.Is(err, core.ErrUnwrapFailed) {
		t.Errorf("RewrapKey with the wrong context: %v", err)
	}
	if _, err := p.RewrapKey(bg, src, core.Context{"": "y"}); !errors.Is(err, core.ErrMalformed) {
		t.Errorf("RewrapKey with an invalid context: %v", err)
	}
	cancelled, cancel := context.WithCancel(bg)
	cancel()
	if _, err := p.RewrapKey(cancelled, src, ec); !errors.Is(err, context.Canceled) {
		t.Errorf("RewrapKey with a cancelled context: %v", err)
	}
	if err := p.DisableVersion("1"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RewrapKey(bg, src, ec); !errors.Is(err, core.ErrKeyDisabled) {
		t.Errorf("RewrapKey from a disabled version: %v", err)
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	p, path := create(t, CreateOptions{})
	if err := p.Health(bg); err != nil {
		t.Fatalf("Health: %v", err)
	}
	cancelled, cancel := context.WithCancel(bg)
	cancel()
	if err := p.Health(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("Health with a cancelled context: %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.Health(bg); !errors.Is(err, core.ErrPermission) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("Health with mode 0644: %v, want ErrPermission", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := p.Health(bg); !errors.Is(err, core.ErrKeyNotFound) {
		t.Errorf("Health without the file: %v, want ErrKeyNotFound", err)
	}
}

func TestCancelledContext(t *testing.T) {
	t.Parallel()
	p, path := create(t, CreateOptions{})
	s := mustWrap(t, p, newDEK(t), nil)
	before, _ := os.ReadFile(path)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	for name, call := range map[string]func() error{
		"CurrentVersion": func() error { _, err := p.CurrentVersion(ctx); return err },
		"WrapKey":        func() error { _, err := p.WrapKey(ctx, newDEK(t), nil); return err },
		"UnwrapKey":      func() error { _, err := p.UnwrapKey(ctx, s, nil); return err },
		"RewrapKey":      func() error { _, err := p.RewrapKey(ctx, s, nil); return err },
		"RotateKey":      func() error { _, err := p.RotateKey(ctx); return err },
		"Health":         func() error { return p.Health(ctx) },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: %v, want context.Canceled", name, err)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a cancelled RotateKey changed the file")
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing.json"), Options{}); !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, core.ErrKeyNotFound) {
		t.Errorf("Open of a missing file: %v", err)
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, core.ErrMalformed) || !strings.Contains(err.Error(), "regular file") {
		t.Errorf("Open of a directory: %v", err)
	}
	fifo := filepath.Join(dir, "fifo.json")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(fifo, Options{}); !errors.Is(err, core.ErrMalformed) || !strings.Contains(err.Error(), "regular file") {
		t.Errorf("Open of a FIFO: %v", err)
	}
	// The size limit is checked before reading: a sparse 1 TiB file (2 GiB
	// where the filesystem refuses) cannot even be allocated.
	big := filepath.Join(dir, "big.json")
	f, err := os.OpenFile(big, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil {
		if err := f.Truncate(2 << 30); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	start := time.Now()
	if _, err := Open(big, Options{}); !errors.Is(err, core.ErrMalformed) || !strings.Contains(err.Error(), "limit") {
		t.Errorf("Open of a huge file: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Open of a huge file took %v: it read before checking the size", d)
	}
	// Just over the limit, with valid JSON padding.
	content := plainFile("big", "1", ver("1", "enabled", k1))
	content = content[:len(content)-1] + strings.Repeat(" ", maxFileSize-len(content)+1) + "}"
	if _, err := Open(writeKeyFile(t, content, 0o600), Options{}); !errors.Is(err, core.ErrMalformed) {
		t.Errorf("Open of a %d-byte file: %v", len(content), err)
	}
	content = content[:len(content)-2] + "}"
	if _, err := Open(writeKeyFile(t, content, 0o600), Options{}); err != nil {
		t.Errorf("Open of a %d-byte file: %v", len(content), err)
	}
}

type fileCase struct {
	name    string
	content string
	want    error
}

// malformedFiles returns key files that Open must refuse, and why. Protected
// ones use the cheap test sealer with passphrase "pw".
func malformedFiles(t testing.TB) []fileCase {
	s := cheapSealer(t, "pw")
	v1 := ver("1", "enabled", k1)
	good := plainFile("kek", "1", v1)
	inner := func(body string) string { return sealedFile(t, s, "kek", []byte(body)) }
	kdf := func(kdf string) string {
		return `{"format": "keyctl-localfile/1", "key_id": "kek", "kdf": ` + kdf + `, "sealed": "` + strings.Repeat("A", 64) + `"}`
	}
	salt := base64.StdEncoding.EncodeToString(make([]byte, 16))
	return []fileCase{
		{"empty", "", core.ErrMalformed},
		{"not JSON", "not json", core.ErrMalformed},
		{"trailing data", good + " x", core.ErrMalformed},
		{"two documents", good + good, core.ErrMalformed},
		{"array", "[" + good + "]", core.ErrMalformed},
		{"string", `"keyctl-localfile/1"`, core.ErrMalformed},
		{"invalid UTF-8", strings.Replace(good, `"kek"`, "\"k\xffk\"", 1), core.ErrMalformed},
		{"unknown top-level field", strings.Replace(good, `{"format"`, `{"comment": "x", "format"`, 1), core.ErrMalformed},
		{"unknown version field", plainFile("kek", "1", `{"version": "1", "state": "enabled", "created": "2025-01-02T03:04:05Z", "key": "`+k1+`", "note": "x"}`), core.ErrMalformed},
		{"field at the wrong level", plainFile("kek", "1", `{"version": "1", "state": "enabled", "created": "2025-01-02T03:04:05Z", "key": "`+k1+`", "salt": "x"}`), core.ErrMalformed},
		{"field in upper case", strings.Replace(good, `"key_id"`, `"KEY_ID"`, 1), core.ErrMalformed},
		{"field with escape", strings.Replace(good, `"key_id"`, `"key\u005fid"`, 1), core.ErrMalformed},
		{"duplicate field", strings.Replace(good, `"key_id": "kek"`, `"key_id": "kek", "key_id": "kek2"`, 1), core.ErrMalformed},
		{"duplicate key field", plainFile("kek", "1", `{"version": "1", "state": "enabled", "created": "2025-01-02T03:04:05Z", "key": "`+k1+`", "key": "`+k2+`"}`), core.ErrMalformed},
		{"null current", strings.Replace(good, `"current": "1"`, `"current": null`, 1), core.ErrMalformed},
		{"null key", plainFile("kek", "1", `{"version": "1", "state": "enabled", "created": "2025-01-02T03:04:05Z", "key": null}`), core.ErrMalformed},
		{"number version", plainFile("kek", "1", `{"version": 1, "state": "enabled", "created": "2025-01-02T03:04:05Z", "key": "`+k1+`"}`), core.ErrMalformed},
		{"versions not an array", strings.Replace(good, `"versions": [`+v1+`]`, `"versions": `+v1, 1), core.ErrMalformed},
		{"boolean key id", strings.Replace(good, `"key_id": "kek"`, `"key_id": true`, 1), core.ErrMalformed},
		{"future format", strings.Replace(good, "keyctl-localfile/1", "keyctl-localfile/2", 1), core.ErrUnsupportedVersion},
		{"other format", strings.Replace(good, "keyctl-localfile/1", "age-encryption.org/v1", 1), core.ErrMalformed},
		{"missing format", strings.Replace(good, `"format": "keyctl-localfile/1", `, "", 1), core.ErrMalformed},
		{"empty key id", plainFile("", "1", v1), core.ErrMalformed},
		{"missing key id", strings.Replace(good, `"key_id": "kek", `, "", 1), core.ErrMalformed},
		{"control character in key id", plainFile("k\tk", "1", v1), core.ErrMalformed},
		{"key id too long", plainFile(strings.Repeat("k", 1025), "1", v1), core.ErrMalformed},
		{"missing current", strings.Replace(good, `"current": "1", `, "", 1), core.ErrMalformed},
		{"missing versions", `{"format": "keyctl-localfile/1", "key_id": "kek", "current": "1"}`, core.ErrMalformed},
		{"no versions", plainFile("kek", "1"), core.ErrMalformed},
		{"current not listed", plainFile("kek", "2", v1), core.ErrMalformed},
		{"current with leading zero", plainFile("kek", "01", v1), core.ErrMalformed},
		{"current disabled", plainFile("kek", "1", ver("1", "disabled", k1), ver("2", "enabled", k2)), core.ErrMalformed},
		{"current destroyed", plainFile("kek", "1", ver("1", "destroyed", ""), ver("2", "enabled", k2)), core.ErrMalformed},
		{"duplicate version", plainFile("kek", "1", v1, ver("1", "enabled", k2)), core.ErrMalformed},
		{"versions out of order", plainFile("kek", "1", ver("2", "enabled", k2), v1), core.ErrMalformed},
		{"version 0", plainFile("kek", "0", ver("0", "enabled", k1)), core.ErrMalformed},
		{"version with leading zero", plainFile("kek", "01", ver("01", "enabled", k1)), core.ErrMalformed},
		{"version not a number", plainFile("kek", "a", ver("a", "enabled", k1)), core.ErrMalformed},
		{"negative version", plainFile("kek", "-1", ver("-1", "enabled", k1)), core.ErrMalformed},
		{"version too large", plainFile("kek", "1000000000", ver("1000000000", "enabled", k1)), core.ErrMalformed},
		{"unknown state", plainFile("kek", "1", ver("1", "active", k1)), core.ErrMalformed},
		{"state in upper case", plainFile("kek", "1", ver("1", "Enabled", k1)), core.ErrMalformed},
		{"bad created", plainFile("kek", "1", strings.Replace(v1, "2025-01-02T03:04:05Z", "yesterday", 1)), core.ErrMalformed},
		{"created not UTC", plainFile("kek", "1", strings.Replace(v1, "2025-01-02T03:04:05Z", "2025-01-02T03:04:05+02:00", 1)), core.ErrMalformed},
		{"created with zero offset", plainFile("kek", "1", strings.Replace(v1, "2025-01-02T03:04:05Z", "2025-01-02T03:04:05+00:00", 1)), core.ErrMalformed},
		{"missing created", plainFile("kek", "1", `{"version": "1", "state": "enabled", "key": "`+k1+`"}`), core.ErrMalformed},
		{"key not base64", plainFile("kek", "1", ver("1", "enabled", "!"+k1[1:])), core.ErrMalformed},
		{"key of 16 bytes", plainFile("kek", "1", ver("1", "enabled", base64.StdEncoding.EncodeToString(make([]byte, 16)))), core.ErrMalformed},
		{"key of 33 bytes", plainFile("kek", "1", ver("1", "enabled", base64.StdEncoding.EncodeToString(make([]byte, 33)))), core.ErrMalformed},
		{"key of 31 bytes", plainFile("kek", "1", ver("1", "enabled", base64.StdEncoding.EncodeToString(make([]byte, 31)))), core.ErrMalformed},
		{"key without padding", plainFile("kek", "1", ver("1", "enabled", strings.TrimSuffix(k1, "="))), core.ErrMalformed},
		{"key with padding bits set", plainFile("kek", "1", ver("1", "enabled", strings.Replace(k1, "8=", "9=", 1))), core.ErrMalformed},
		{"key in base64url", plainFile("kek", "1", ver("1", "enabled", base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)))), core.ErrMalformed},
		{"key with escape", plainFile("kek", "1", `{"version": "1", "state": "enabled", "created": "2025-01-02T03:04:05Z", "key": "\u0041`+k1[1:]+`"}`), core.ErrMalformed},
		{"key with line break", plainFile("kek", "1", `{"version": "1", "state": "enabled", "created": "2025-01-02T03:04:05Z", "key": "`+k1[:20]+`\n`+k1[20:]+`"}`), core.ErrMalformed},
		{"key as number", plainFile("kek", "1", `{"version": "1", "state": "enabled", "created": "2025-01-02T03:04:05Z", "key": 12}`), core.ErrMalformed},
		{"destroyed with key", plainFile("kek", "2", ver("1", "destroyed", k1), ver("2", "enabled", k2)), core.ErrMalformed},
		{"enabled without key", plainFile("kek", "1", ver("1", "enabled", "")), core.ErrMalformed},
		{"disabled without key", plainFile("kek", "2", ver("1", "disabled", ""), ver("2", "enabled", k2)), core.ErrMalformed},
		{"clear and sealed", strings.Replace(good, `"current"`, `"sealed": "AAAA", "current"`, 1), core.ErrMalformed},
		{"kdf without sealed", strings.Replace(good, `"current"`, `"kdf": {"name": "scrypt", "salt": "`+salt+`", "n": 1024, "r": 8, "p": 1}, "current"`, 1), core.ErrMalformed},
		{"sealed without kdf", `{"format": "keyctl-localfile/1", "key_id": "kek", "sealed": "AAAA"}`, core.ErrMalformed},
		{"kdf argon2", kdf(`{"name": "argon2id", "salt": "` + salt + `", "n": 1024, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf n not a power of two", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 1000, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf n too small", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 512, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf n too large", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 2097152, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf memory too large", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 1048576, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf r zero", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 1024, "r": 0, "p": 1}`), core.ErrMalformed},
		{"kdf p too large", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 1024, "r": 8, "p": 17}`), core.ErrMalformed},
		{"kdf n fractional", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 1024.5, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf n overflows", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 1e400, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf n as string", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": "1024", "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf missing salt", kdf(`{"name": "scrypt", "n": 1024, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf short salt", kdf(`{"name": "scrypt", "salt": "AAAA", "n": 1024, "r": 8, "p": 1}`), core.ErrMalformed},
		{"kdf unknown field", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 1024, "r": 8, "p": 1, "dklen": 32}`), core.ErrMalformed},
		{"sealed not base64", strings.Replace(kdf(`{"name": "scrypt", "salt": "`+salt+`", "n": 1024, "r": 8, "p": 1}`), strings.Repeat("A", 64), "!!!!", 1), core.ErrMalformed},
		{"sealed too short", strings.Replace(kdf(`{"name": "scrypt", "salt": "`+salt+`", "n": 1024, "r": 8, "p": 1}`), strings.Repeat("A", 64), "AAAA", 1), core.ErrMalformed},
		{"sealed garbage", kdf(`{"name": "scrypt", "salt": "` + salt + `", "n": 1024, "r": 8, "p": 1}`), core.ErrPermission},
		{"protected with clear versions", strings.Replace(inner(`{"current": "1", "versions": [`+v1+`]}`), `"sealed"`, `"current": "1", "sealed"`, 1), core.ErrMalformed},
		{"sealed: not JSON", inner(`nope`), core.ErrMalformed},
		{"sealed: unknown field", inner(`{"current": "1", "versions": [` + v1 + `], "format": "x"}`), core.ErrMalformed},
		{"sealed: missing current", inner(`{"versions": [` + v1 + `]}`), core.ErrMalformed},
		{"sealed: bad key", inner(`{"current": "1", "versions": [` + ver("1", "enabled", "AAAA") + `]}`), core.ErrMalformed},
		{"sealed: current disabled", inner(`{"current": "1", "versions": [` + ver("1", "disabled", k1) + `]}`), core.ErrMalformed},
		{"sealed: empty", inner(``), core.ErrMalformed},
	}
}

func TestMalformedFiles(t *testing.T) {
	t.Parallel()
	for _, tc := range malformedFiles(t) {
		t.Run(tc.name, func(t *testing.T) {
			path := writeKeyFile(t, tc.content, 0o600)
			p, err := Open(path, Options{Passphrase: constPass("pw")})
			if err == nil {
				t.Fatalf("Open accepted it: %+v", p.Versions())
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
	// The cheap sealer's files open when well formed, so the cases above
	// fail for the reason they claim.
	s := cheapSealer(t, "pw")
	ok := sealedFile(t, s, "kek", []byte(`{"current": "1", "versions": [`+ver("1", "enabled", k1)+`]}`))
	open(t, writeKeyFile(t, ok, 0o600), Options{Passphrase: constPass("pw")})
}

// TestKeyNeverInErrors puts a literal key into key files in every place a
// parser might quote it, and checks that no error message contains it.
func TestKeyNeverInErrors(t *testing.T) {
	t.Parallel()
	key := rawKey(t, k3)
	needles := []string{k3, strings.TrimSuffix(k3, "="), hex.EncodeToString(key), base64.RawURLEncoding.EncodeToString(key), string(key)}
	for i := 0; i+8 <= len(k3)-1; i++ {
		needles = append(needles, k3[i:i+8])
	}
	cheap := cheapSealer(t, "pw")
	files := []fileCase{
		{"valid key, trailing garbage", plainFile("kek", "1", ver("1", "enabled", k3)) + "x", nil},
		{"valid key, bad JSON inside the key", strings.Replace(plainFile("kek", "1", ver("1", "enabled", k3)), k3+`"`, k3+`\`, 1), nil},
		{"valid key, unknown field", strings.Replace(plainFile("kek", "1", ver("1", "enabled", k3)), `"current"`, `"x": 1, "current"`, 1), nil},
		{"key as field name", `{"` + k3 + `": 1}`, nil},
		{"key as lowercase field name", `{"` + strings.ToLower(k3[:16]) + `": 1}`, nil},
		{"key as format", strings.Replace(plainFile("kek", "1", ver("1", "enabled", k1)), formatV1, k3, 1), nil},
		{"key as state", plainFile("kek", "1", ver("1", k3, k1)), nil},
		{"key as created", plainFile("kek", "1", strings.Replace(ver("1", "enabled", k1), "2025-01-02T03:04:05Z", k3, 1)), nil},
		{"key as version", plainFile("kek", "1", ver(k3, "enabled", k1)), nil},
		{"key as current", plainFile("kek", k3, ver("1", "enabled", k1)), nil},
		{"key in invalid key id", plainFile(k3+"\x01", "1", ver("1", "enabled", k1)), nil},
		{"key one character off", plainFile("kek", "1", ver("1", "enabled", "*"+k3[1:])), nil},
		{"key too long", plainFile("kek", "1", ver("1", "enabled", k3+k3)), nil},
		{"key with a destroyed version", plainFile("kek", "2", ver("1", "destroyed", k3), ver("2", "enabled", k1)), nil},
		{"key as number", strings.Replace(plainFile("kek", "1", ver("1", "enabled", k1)), `"1", "versions"`, `1e99999, "versions"`, 1), nil},
		{"key as kdf name", `{"format": "keyctl-localfile/1", "key_id": "kek", "kdf": {"name": "` + k3 + `", "salt": "AAAA", "n": 1024, "r": 8, "p": 1}, "sealed": "AAAA"}`, nil},
		{"key as sealed", `{"format": "keyctl-localfile/1", "key_id": "kek", "kdf": {"name": "scrypt", "salt": "` + base64.StdEncoding.EncodeToString(make([]byte, 16)) + `", "n": 1024, "r": 8, "p": 1}, "sealed": "` + k3 + `"}`, nil},
		{"key in a sealed file, bad inner JSON", sealedFile(t, cheap, "kek", []byte(`{"current": "1", "versions": [`+ver("1", "enabled", k3)+`]`)), nil},
		{"key in a sealed file, wrong state", sealedFile(t, cheap, "kek", []byte(`{"current": "1", "versions": [`+ver("1", k3, k3)+`]}`)), nil},
		{"key in a sealed file, current disabled", sealedFile(t, cheap, "kek", []byte(`{"current": "1", "versions": [`+ver("1", "disabled", k3)+`]}`)), nil},
	}
	check := func(t *testing.T, err error) {
		t.Helper()
		if err == nil {
			return
		}
		msg := err.Error()
		for _, n := range needles {
			if strings.Contains(msg, n) {
				t.Fatalf("error reveals key material %q: %s", n, msg)
			}
		}
	}
	for _, tc := range files {
		t.Run(tc.name, func(t *testing.T) {
			path := writeKeyFile(t, tc.content, 0o600)
			_, err := Open(path, Options{Passphrase: constPass("pw")})
			if err == nil {
				t.Fatal("Open accepted the file")
			}
			check(t, err)
		})
	}
	t.Run("unsafe mode", func(t *testing.T) {
		_, err := Open(writeKeyFile(t, plainFile("kek", "1", ver("1", "enabled", k3)), 0o644), Options{})
		if err == nil {
			t.Fatal("accepted")
		}
		check(t, err)
	})
	t.Run("errors of a working provider", func(t *testing.T) {
		path := writeKeyFile(t, plainFile("kek", "2", ver("1", "enabled", k3), ver("2", "enabled", k1)), 0o600)
		p := open(t, path, Options{})
		s := mustWrap(t, p, newDEK(t), ec)
		_, err := p.UnwrapKey(bg, s, nil)
		check(t, err)
		s.KeyVersion = "1"
		_, err = p.UnwrapKey(bg, s, ec)
		check(t, err)
		check(t, p.DisableVersion("2"))
		check(t, p.DisableVersion("1"))
		_, err = p.UnwrapKey(bg, s, ec)
		check(t, err)
		check(t, p.DestroyVersion("1"))
		raw, _ := os.ReadFile(path)
		if bytes.Contains(raw, []byte(k3)) {
			t.Fatal("destroyed key still in the file")
		}
	})
}

// TestEncodeDecodeRoundTrip checks that what the writer emits is what the
// strict reader accepts, in both forms.
func TestEncodeDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	created := time.Date(2024, 2, 29, 23, 59, 59, 123000000, time.UTC)
	kf := &keyFile{keyID: "quote\"and\\slash ü", current: "7", versions: []fileVersion{
		{name: "2", num: 2, state: StateDestroyed, created: created},
		{name: "5", num: 5, state: StateDisabled, created: created, key: rawKey(t, k1)},
		{name: "7", num: 7, state: StateEnabled, created: created, key: rawKey(t, k2)},
	}}
	for name, s := range map[string]*sealer{"plain": nil, "sealed": cheapSealer(t, "pw")} {
		t.Run(name, func(t *testing.T) {
			b, err := encodeFile(kf, s)
			if err != nil {
				t.Fatal(err)
			}
			got, gs, err := decodeFile(b, func(k kdfParams) (*sealer, error) {
				if s == nil || !k.equal(s.kdf) {
					t.Fatal("unexpected sealer request")
				}
				return s, nil
			})
			if err != nil {
				t.Fatalf("decode: %v\n%s", err, b)
			}
			if gs != s {
				t.Error("sealer not returned")
			}
			if got.keyID != kf.keyID || got.current != kf.current || len(got.versions) != len(kf.versions) {
				t.Fatalf("decoded %+v", got)
			}
			for i, v := range got.versions {
				w := kf.versions[i]
				if v.name != w.name || v.num != w.num || v.state != w.state || !v.created.Equal(w.created) || !bytes.Equal(v.key, w.key) {
					t.Errorf("version %d: %+v, want %+v", i, v, w)
				}
			}
		})
	}
}

func BenchmarkWrap(b *testing.B) {
	p, _ := create(b, CreateOptions{})
	dek := newDEK(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.WrapKey(bg, dek, ec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnwrap(b *testing.B) {
	p, _ := create(b, CreateOptions{})
	dek := newDEK(b)
	s := mustWrap(b, p, dek, ec)
	b.ReportAllocs()
	for b.Loop() {
		d, err := p.UnwrapKey(bg, s, ec)
		if err != nil {
			b.Fatal(err)
		}
		d.Zero()
	}
}

// TestRequireProtected: a configured passphrase makes an unprotected key file
// (a downgrade) an error, and a protected one still opens.
func TestRequireProtected(t *testing.T) {
	_, plain := create(t, CreateOptions{})
	if _, err := Open(plain, Options{RequireProtected: true, Passphrase: constPass("pw")}); !errors.Is(err, core.ErrPermission) || !strings.Contains(err.Error(), "not passphrase-protected") {
		t.Fatalf("unprotected file with RequireProtected: %v", err)
	}
	_, prot := create(t, CreateOptions{Passphrase: []byte("pw")})
	if _, err := Open(prot, Options{RequireProtected: true, Passphrase: constPass("pw")}); err != nil {
		t.Fatalf("protected file with RequireProtected: %v", err)
	}
}
