// Package golden holds the fixtures behind keyctl's golden test vectors
// (core/testdata/wrappedkey and core/testdata/field): the test KEK and DEKs,
// derived from fixed labels so that no key bytes are committed, a writer for
// the matching local key file and keyset, and the vector file reader.
//
// Vector files are text, one "name: value" per line ('#' starts a comment):
//
//	description: what the vector exercises
//	expect:      ok | malformed | unsupported-version | unknown-algorithm |
//	             unwrap-failed | decrypt-failed | no-provider | key-not-found
//	context:     k=v,k=v          (wrapped keys: the encryption context to unwrap with)
//	ad:          text             (field ciphertexts: the associated data)
//	dek:         label            (ok wrapped keys: the DEK is DEK(label))
//	plaintext:   text             (ok field ciphertexts)
//	input:       text form        (or input-hex: the binary form in hex)
package golden

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/keyctl/keyctl/core"
)

// KeyID is the key id of the golden local KEK.
const KeyID = "golden"

// Field DEK ids of the golden keyset: FieldOld is decrypt-only, FieldNew is
// the primary.
const (
	FieldOld uint32 = 0x00000001
	FieldNew uint32 = 0x00000002
)

// KEK returns version v of the golden KEK: SHA-256 of a fixed label.
func KEK(v int) []byte {
	h := sha256.Sum256(fmt.Appendf(nil, "keyctl golden KEK version %d", v))
	return h[:]
}

// DEK returns the golden DEK with the given label: SHA-256 of a fixed label.
func DEK(label string) core.DEK {
	h := sha256.Sum256([]byte("keyctl golden DEK " + label))
	return core.DEK(h[:])
}

// FieldDEK returns the DEK of the golden keyset entry id.
func FieldDEK(id uint32) core.DEK { return DEK(fmt.Sprintf("field-%d", id)) }

// WriteKeyFile writes the golden local key file (versions "1" and "2",
// current "2") at path with mode 0600, in the format of providers/localfile.
func WriteKeyFile(path string) error {
	type version struct {
		Version string `json:"version"`
		State   string `json:"state"`
		Created string `json:"created"`
		Key     string `json:"key"`
	}
	f := struct {
		Format   string    `json:"format"`
		KeyID    string    `json:"key_id"`
		Current  string    `json:"current"`
		Versions []version `json:"versions"`
	}{Format: "keyctl-localfile/1", KeyID: KeyID, Current: "2"}
	for v := 1; v <= 2; v++ {
		f.Versions = append(f.Versions, version{
			Version: fmt.Sprint(v), State: "enabled", Created: "2026-01-01T00:00:00Z",
			Key: base64.StdEncoding.EncodeToString(KEK(v)),
		})
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o600)
}

// Keyset returns a keyset holding the golden field DEKs (FieldOld
// decrypt-only, FieldNew primary), freshly wrapped with ring.
func Keyset(ctx context.Context, ring *core.Keyring) (*core.Keyset, error) {
	ks := core.NewKeyset()
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, e := range []core.KeysetEntry{
		{ID: FieldOld, State: core.StateDecryptOnly, Created: created},
		{ID: FieldNew, State: core.StatePrimary, Created: created},
	} {
		wk, err := ring.Wrap(ctx, FieldDEK(e.ID), e.Context())
		if err != nil {
			return nil, err
		}
		e.Wrapped = wk
		ks.DEKs = append(ks.DEKs, e)
	}
	return ks, ks.Validate()
}

// Vector is one golden test vector.
type Vector struct {
	Name        string // file name without .txt
	Description string
	Expect      string
	Context     core.Context
	AD          []byte
	DEK         string
	Plaintext   string
	Input       []byte // the bytes to parse: text form or decoded binary
	Binary      bool   // Input came from input-hex
}

// Err returns the sentinel error an Expect value names, or nil for "ok".
func Err(expect string) (error, bool) {
	m := map[string]error{
		"ok":                  nil,
		"malformed":           core.ErrMalformed,
		"unsupported-version": core.ErrUnsupportedVersion,
		"unknown-algorithm":   core.ErrUnknownAlgorithm,
		"unwrap-failed":       core.ErrUnwrapFailed,
		"decrypt-failed":      core.ErrDecryptFailed,
		"no-provider":         core.ErrNoProvider,
		"key-not-found":       core.ErrKeyNotFound,
	}
	e, ok := m[expect]
	return e, ok
}

// Dir returns the absolute path of core/testdata.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "core", "testdata")
}

// Load reads every vector file in dir, sorted by name.
func Load(dir string) ([]Vector, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var out []Vector
	for _, n := range names {
		v, err := parse(n)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n, err)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no vectors in %s", dir)
	}
	return out, nil
}

func parse(path string) (Vector, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Vector{}, err
	}
	v := Vector{Name: strings.TrimSuffix(filepath.Base(path), ".txt")}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	haveInput := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		k, val, ok := strings.Cut(line, ":")
		if !ok {
			return v, fmt.Errorf("line %q: want name: value", line)
		}
		val = strings.TrimPrefix(val, " ")
		switch k {
		case "description":
			v.Description = val
		case "expect":
			if _, ok := Err(val); !ok {
				return v, fmt.Errorf("unknown expect %q", val)
			}
			v.Expect = val
		case "context":
			v.Context = core.Context{}
			for _, pair := range strings.Split(val, ",") {
				ck, cv, err := core.ParseContextPair(pair)
				if err != nil {
					return v, err
				}
				v.Context[ck] = cv
			}
		case "ad":
			v.AD = []byte(val)
		case "dek":
			v.DEK = val
		case "plaintext":
			v.Plaintext = val
		case "input":
			v.Input, haveInput = []byte(val), true
		case "input-hex":
			v.Input, err = hex.DecodeString(val)
			if err != nil {
				return v, fmt.Errorf("input-hex: %w", err)
			}
			v.Binary, haveInput = true, true
		default:
			return v, fmt.Errorf("unknown field %q", k)
		}
	}
	if err := sc.Err(); err != nil {
		return v, err
	}
	if !haveInput || v.Expect == "" || v.Description == "" {
		return v, errors.New("description, expect and input are required")
	}
	return v, nil
}

// Write writes v to dir/v.Name.txt.
func Write(dir string, v Vector) error {
	var b strings.Builder
	fmt.Fprintf(&b, "description: %s\nexpect: %s\n", v.Description, v.Expect)
	if len(v.Context) > 0 {
		fmt.Fprintf(&b, "context: %s\n", v.Context)
	}
	if v.AD != nil {
		fmt.Fprintf(&b, "ad: %s\n", v.AD)
	}
	if v.DEK != "" {
		fmt.Fprintf(&b, "dek: %s\n", v.DEK)
	}
	if v.Plaintext != "" {
		fmt.Fprintf(&b, "plaintext: %s\n", v.Plaintext)
	}
	if v.Binary {
		fmt.Fprintf(&b, "input-hex: %x\n", v.Input)
	} else {
		fmt.Fprintf(&b, "input: %s\n", v.Input)
	}
	return os.WriteFile(filepath.Join(dir, v.Name+".txt"), []byte(b.String()), 0o644)
}
