//go:build unix

package localfile

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyctl/keyctl/core"
)

// FuzzOpen feeds arbitrary bytes to Open as a key file. Open must never
// panic; it either refuses with an error that wraps a documented sentinel and
// names the file, or returns a provider that wraps and unwraps.
func FuzzOpen(f *testing.F) {
	s := cheapSealer(f, "pw")
	valid := &keyFile{keyID: "fuzz", current: "2", versions: []fileVersion{
		{name: "1", num: 1, state: StateDisabled, key: rawKey(f, k1)},
		{name: "2", num: 2, state: StateEnabled, key: rawKey(f, k2)},
		{name: "3", num: 3, state: StateDestroyed},
	}}
	for _, sl := range []*sealer{nil, s} {
		b, err := encodeFile(valid, sl)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(plainFile("golden", "2", ver("1", "disabled", k1), ver("2", "enabled", k2), ver("3", "destroyed", ""))))
	for _, tc := range malformedFiles(f) {
		if len(tc.content) < 4096 {
			f.Add([]byte(tc.content))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "kek.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var opts Options
		if cheapKDF(data) {
			opts.Passphrase = constPass("pw")
		}
		p, err := Open(path, opts)
		if err != nil {
			if !errors.Is(err, core.ErrMalformed) && !errors.Is(err, core.ErrUnsupportedVersion) && !errors.Is(err, core.ErrPermission) {
				t.Fatalf("Open error wraps no documented sentinel: %v", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("Open error does not name the file: %v", err)
			}
			return
		}
		vs := p.Versions()
		currents := 0
		for _, v := range vs {
			if v.Current {
				currents++
				if v.State != StateEnabled {
					t.Fatalf("current version %s is %s", v.Version, v.State)
				}
			}
		}
		if len(vs) == 0 || currents != 1 {
			t.Fatalf("%d versions, %d current", len(vs), currents)
		}
		dek, err := core.NewDEK()
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.WrapKey(bg, dek, ec)
		if err != nil {
			t.Fatalf("WrapKey on an accepted file: %v", err)
		}
		got, err := p.UnwrapKey(bg, st, ec)
		if err != nil || !got.Equal(dek) {
			t.Fatalf("round trip on an accepted file: %v", err)
		}
		// What Open accepted survives a rewrite.
		if _, err := p.RotateKey(bg); err != nil && !errors.Is(err, core.ErrUnsupported) {
			t.Fatalf("RotateKey: %v", err)
		}
		q, err := Open(path, opts)
		if err != nil {
			t.Fatalf("reopen after rewrite: %v", err)
		}
		got, err = q.UnwrapKey(bg, st, ec)
		if err != nil || !got.Equal(dek) {
			t.Fatalf("unwrap after rewrite: %v", err)
		}
		if qv := q.Versions(); len(qv) < len(vs) {
			t.Fatalf("rewrite lost versions: %d, had %d", len(qv), len(vs))
		}
	})
}

// cheapKDF reports whether data is unprotected or asks for a scrypt cost low
// enough to fuzz; only then is a passphrase given.
func cheapKDF(data []byte) bool {
	var probe struct {
		KDF *struct{ N, R, P int } `json:"kdf"`
	}
	if json.Unmarshal(data, &probe) != nil || probe.KDF == nil {
		return true
	}
	return probe.KDF.N <= 4096 && probe.KDF.R <= 8 && probe.KDF.P <= 2
}

// FuzzDecode fuzzes the key file parser without the file system, much faster
// than FuzzOpen: it must never panic, must refuse with a documented
// sentinel, and what it accepts must encode and decode back to the same.
func FuzzDecode(f *testing.F) {
	s := cheapSealer(f, "pw")
	for _, tc := range malformedFiles(f) {
		if len(tc.content) < 4096 {
			f.Add([]byte(tc.content))
		}
	}
	valid := &keyFile{keyID: "fuzz", current: "2", versions: []fileVersion{
		{name: "1", num: 1, state: StateDisabled, key: rawKey(f, k1)},
		{name: "2", num: 2, state: StateEnabled, key: rawKey(f, k2)},
		{name: "3", num: 3, state: StateDestroyed},
	}}
	for _, sl := range []*sealer{nil, s} {
		b, err := encodeFile(valid, sl)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	getSealer := func(k kdfParams) (*sealer, error) {
		if !k.equal(s.kdf) {
			return nil, core.ErrPermission // any other parameters: as a wrong passphrase
		}
		return s, nil
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		kf, sl, err := decodeFile(data, getSealer)
		if err != nil {
			if !errors.Is(err, core.ErrMalformed) && !errors.Is(err, core.ErrUnsupportedVersion) && !errors.Is(err, core.ErrPermission) {
				t.Fatalf("error wraps no documented sentinel: %v", err)
			}
			return
		}
		b, err := encodeFile(kf, sl)
		if err != nil {
			t.Fatal(err)
		}
		back, _, err := decodeFile(b, getSealer)
		if err != nil {
			t.Fatalf("re-decoding what was accepted: %v", err)
		}
		if back.keyID != kf.keyID || back.current != kf.current || len(back.versions) != len(kf.versions) {
			t.Fatal("round trip changed the key file")
		}
		for i, v := range back.versions {
			w := kf.versions[i]
			if v.name != w.name || v.state != w.state || !v.created.Equal(w.created) || string(v.key) != string(w.key) {
				t.Fatalf("round trip changed version %d", i)
			}
		}
		if _, err := buildState(kf, nil); err != nil {
			t.Fatalf("accepted file does not build: %v", err)
		}
	})
}
