package localfile

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/scrypt"

	"github.com/keyctl/keyctl/core"
)

// Key file format, version 1 (docs/localfile.md).
const (
	formatV1      = "keyctl-localfile/1"
	formatPrefix  = "keyctl-localfile/"
	maxFileSize   = 1 << 20
	maxVersions   = 4096
	maxVersionNum = 999_999_999
	keySize       = 32
	saltSize      = 16
	minSaltSize   = 16
	maxSaltSize   = 64

	// sealDomain separates the associated data of the sealed key material.
	sealDomain = "keyctl-localfile/1 seal"

	// Bounds on scrypt parameters read from a file, so that a hostile file
	// cannot make Open spend unbounded memory or time.
	minScryptN      = 1 << 10
	maxScryptN      = 1 << 20
	maxScryptR      = 32
	maxScryptP      = 16
	maxScryptMemory = 256 << 20 // 128 * N * r bytes
)

// defaultScrypt are the parameters Create writes.
var defaultScrypt = struct{ n, r, p int }{n: 32768, r: 8, p: 1}

// keyFile is the decoded content of a key file. Raw keys are held only while
// reading or writing the file; call zero when done.
type keyFile struct {
	keyID    string
	current  string
	versions []fileVersion // ascending by number
}

type fileVersion struct {
	name    string
	num     uint64
	state   VersionState
	created time.Time
	key     []byte // nil when destroyed
}

func (kf *keyFile) zero() {
	if kf == nil {
		return
	}
	for i := range kf.versions {
		clear(kf.versions[i].key)
	}
}

// kdfParams are the scrypt parameters of a protected file.
type kdfParams struct {
	salt    []byte
	n, r, p int
}

func (k kdfParams) equal(o kdfParams) bool {
	return bytes.Equal(k.salt, o.salt) && k.n == o.n && k.r == o.r && k.p == o.p
}

// sealer seals and opens the key material of a protected file.
type sealer struct {
	kdf  kdfParams
	aead cipher.AEAD
}

func newSealer(pass []byte, k kdfParams) (*sealer, error) {
	dk, err := scrypt.Key(pass, k.salt, k.n, k.r, k.p, 32)
	if err != nil {
		return nil, fmt.Errorf("scrypt: %w", err)
	}
	defer clear(dk)
	block, err := aes.NewCipher(dk)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{kdf: k, aead: aead}, nil
}

// sealAD is the associated data of the sealed key material: the format and
// key id, length-prefixed after a domain string.
func sealAD(keyID string) []byte {
	b := appendLP(nil, sealDomain)
	b = appendLP(b, formatV1)
	return appendLP(b, keyID)
}

// readKeyFile reads and decodes the key file at file (display name path),
// refusing unsafe permissions and oversized files before reading.
func readKeyFile(path, file string, getSealer func(kdfParams) (*sealer, error)) (*keyFile, *sealer, os.FileInfo, error) {
	fail := func(err error) (*keyFile, *sealer, os.FileInfo, error) {
		return nil, nil, nil, fmt.Errorf("localfile: key file %s: %w", path, err)
	}
	// Refuse a FIFO or device before opening it, which could block; the
	// check on the opened file below is the one that counts.
	if fi, err := os.Stat(file); err != nil {
		return fail(osError(err))
	} else if !fi.Mode().IsRegular() {
		return fail(fmt.Errorf("not a regular file: %w", core.ErrMalformed))
	}
	f, err := os.Open(file)
	if err != nil {
		return fail(osError(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fail(osError(err))
	}
	if !fi.Mode().IsRegular() {
		return fail(fmt.Errorf("not a regular file: %w", core.ErrMalformed))
	}
	if err := checkMode(path, fi); err != nil {
		return nil, nil, nil, err
	}
	if fi.Size() > maxFileSize {
		return fail(fmt.Errorf("%d bytes, over the limit of %d: %w", fi.Size(), maxFileSize, core.ErrMalformed))
	}
	buf := make([]byte, fi.Size()+1)
	defer clear(buf)
	n, err := io.ReadFull(f, buf)
	switch {
	case err == nil:
		return fail(fmt.Errorf("the file grew while being read: %w", core.ErrUnavailable))
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
	default:
		return fail(osError(err))
	}
	kf, s, err := decodeFile(buf[:n], getSealer)
	if err != nil {
		return fail(err)
	}
	return kf, s, fi, nil
}

// JSON shapes. Unmarshalling never sees an unknown, duplicate, null or
// wrongly typed field: checkJSON rejects those first.
type jsonOuter struct {
	Format   string        `json:"format"`
	KeyID    string        `json:"key_id"`
	Current  *string       `json:"current"`
	Versions []jsonVersion `json:"versions"`
	KDF      *jsonKDF      `json:"kdf"`
	Sealed   *string       `json:"sealed"`
}

type jsonInner struct {
	Current  *string       `json:"current"`
	Versions []jsonVersion `json:"versions"`
}

type jsonVersion struct {
	Version string `json:"version"`
	State   string `json:"state"`
	Created string `json:"created"`
	// Key is kept raw so that its bytes can be zeroed after decoding.
	Key json.RawMessage `json:"key"`
}

type jsonKDF struct {
	Name string `json:"name"`
	Salt string `json:"salt"`
	N    int    `json:"n"`
	R    int    `json:"r"`
	P    int    `json:"p"`
}

func zeroJSONVersions(vs []jsonVersion) {
	for i := range vs {
		clear(vs[i].Key)
	}
}

// decodeFile parses the bytes of a key file. For a protected file it asks
// getSealer for the sealer matching the file's KDF parameters and returns it.
// Errors wrap core.ErrMalformed, core.ErrUnsupportedVersion or (wrong
// passphrase) core.ErrPermission; they never contain key material.
func decodeFile(b []byte, getSealer func(kdfParams) (*sealer, error)) (*keyFile, *sealer, error) {
	if len(b) > maxFileSize {
		return nil, nil, fmt.Errorf("%d bytes, over the limit of %d: %w", len(b), maxFileSize, core.ErrMalformed)
	}
	if err := checkJSON(b, outerSchema); err != nil {
		return nil, nil, err
	}
	var o jsonOuter
	err := json.Unmarshal(b, &o)
	defer zeroJSONVersions(o.Versions)
	if err != nil {
		return nil, nil, jsonError(err)
	}
	if o.Format != formatV1 {
		if isFormatVersion(o.Format) {
			return nil, nil, fmt.Errorf("format %q: this build reads %q: %w", o.Format, formatV1, core.ErrUnsupportedVersion)
		}
		return nil, nil, fmt.Errorf("\"format\" is not %q: not a keyctl local key file: %w", formatV1, core.ErrMalformed)
	}
	if err := validKeyID(o.KeyID); err != nil {
		return nil, nil, err
	}
	kf := &keyFile{keyID: o.KeyID}
	protected := o.KDF != nil || o.Sealed != nil
	if !protected {
		if o.Current == nil || o.Versions == nil {
			return nil, nil, fmt.Errorf("\"current\" and \"versions\" are required (or \"kdf\" and \"sealed\" for a protected file): %w", core.ErrMalformed)
		}
		if err := kf.setVersions(*o.Current, o.Versions); err != nil {
			return nil, nil, err
		}
		return kf, nil, nil
	}
	if o.KDF == nil || o.Sealed == nil {
		return nil, nil, fmt.Errorf("a protected file needs both \"kdf\" and \"sealed\": %w", core.ErrMalformed)
	}
	if o.Current != nil || o.Versions != nil {
		return nil, nil, fmt.Errorf("a protected file may not have \"current\" or \"versions\" in clear: %w", core.ErrMalformed)
	}
	k, err := parseKDF(o.KDF)
	if err != nil {
		return nil, nil, err
	}
	sealed, err := base64.StdEncoding.Strict().DecodeString(*o.Sealed)
	if err != nil {
		return nil, nil, fmt.Errorf("\"sealed\" is not canonical standard base64: %w", core.ErrMalformed)
	}
	if len(sealed) < nonceSize+tagSize {
		return nil, nil, fmt.Errorf("\"sealed\" is %d bytes, shorter than nonce and tag: %w", len(sealed), core.ErrMalformed)
	}
	s, err := getSealer(k)
	if err != nil {
		return nil, nil, err
	}
	plain, err := s.aead.Open(nil, sealed[:nonceSize], sealed[nonceSize:], sealAD(o.KeyID))
	if err != nil {
		return nil, nil, fmt.Errorf("wrong passphrase, or the sealed key data was altered: %w", core.ErrPermission)
	}
	defer clear(plain)
	if err := checkJSON(plain, innerSchema); err != nil {
		return nil, nil, fmt.Errorf("sealed data: %w", err)
	}
	var in jsonInner
	err = json.Unmarshal(plain, &in)
	defer zeroJSONVersions(in.Versions)
	if err != nil {
		return nil, nil, fmt.Errorf("sealed data: %w", jsonError(err))
	}
	if in.Current == nil || in.Versions == nil {
		return nil, nil, fmt.Errorf("sealed data: \"current\" and \"versions\" are required: %w", core.ErrMalformed)
	}
	if err := kf.setVersions(*in.Current, in.Versions); err != nil {
		kf.zero()
		return nil, nil, fmt.Errorf("sealed data: %w", err)
	}
	return kf, s, nil
}

func isFormatVersion(f string) bool {
	rest, ok := strings.CutPrefix(f, formatPrefix)
	if !ok || len(rest) == 0 || len(rest) > 6 {
		return false
	}
	for _, c := range []byte(rest) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func parseKDF(j *jsonKDF) (kdfParams, error) {
	var k kdfParams
	if j.Name != "scrypt" {
		return k, fmt.Errorf("kdf: \"name\" is not \"scrypt\": %w", core.ErrMalformed)
	}
	if j.N < minScryptN || j.N > maxScryptN || j.N&(j.N-1) != 0 {
		return k, fmt.Errorf("kdf: n = %d, want a power of two in %d..%d: %w", j.N, minScryptN, maxScryptN, core.ErrMalformed)
	}
	if j.R < 1 || j.R > maxScryptR {
		return k, fmt.Errorf("kdf: r = %d, want 1..%d: %w", j.R, maxScryptR, core.ErrMalformed)
	}
	if j.P < 1 || j.P > maxScryptP {
		return k, fmt.Errorf("kdf: p = %d, want 1..%d: %w", j.P, maxScryptP, core.ErrMalformed)
	}
	if 128*j.N*j.R > maxScryptMemory {
		return k, fmt.Errorf("kdf: n = %d with r = %d needs %d MiB, over the limit of %d MiB: %w", j.N, j.R, 128*j.N*j.R>>20, maxScryptMemory>>20, core.ErrMalformed)
	}
	salt, err := base64.StdEncoding.Strict().DecodeString(j.Salt)
	if err != nil {
		return k, fmt.Errorf("kdf: \"salt\" is not canonical standard base64: %w", core.ErrMalformed)
	}
	if len(salt) < minSaltSize || len(salt) > maxSaltSize {
		return k, fmt.Errorf("kdf: salt is %d bytes, want %d..%d: %w", len(salt), minSaltSize, maxSaltSize, core.ErrMalformed)
	}
	return kdfParams{salt: salt, n: j.N, r: j.R, p: j.P}, nil
}

// setVersions validates and decodes the versions and current version.
func (kf *keyFile) setVersions(current string, vs []jsonVersion) (err error) {
	defer func() {
		if err != nil {
			kf.zero()
			kf.versions = nil
		}
	}()
	if len(vs) == 0 || len(vs) > maxVersions {
		return fmt.Errorf("%d versions, want 1..%d: %w", len(vs), maxVersions, core.ErrMalformed)
	}
	kf.versions = make([]fileVersion, 0, len(vs))
	for i, jv := range vs {
		fv, err := parseVersion(jv)
		if err != nil {
			return fmt.Errorf("versions[%d]: %w", i, err)
		}
		kf.versions = append(kf.versions, fv)
		if i > 0 {
			prev := kf.versions[i-1].num
			if fv.num == prev {
				return fmt.Errorf("versions[%d]: version %q appears twice: %w", i, fv.name, core.ErrMalformed)
			}
			if fv.num < prev {
				return fmt.Errorf("versions[%d]: version %q after %q: versions must be in ascending order: %w", i, fv.name, kf.versions[i-1].name, core.ErrMalformed)
			}
		}
	}
	num, ok := parseVersionNum(current)
	if !ok {
		return fmt.Errorf("\"current\" is not a version number: %w", core.ErrMalformed)
	}
	for _, fv := range kf.versions {
		if fv.num != num {
			continue
		}
		if fv.state != StateEnabled {
			return fmt.Errorf("current version %q is %s, must be enabled: %w", fv.name, fv.state, core.ErrMalformed)
		}
		kf.current = fv.name
		return nil
	}
	return fmt.Errorf("current version %q is not in \"versions\": %w", current, core.ErrMalformed)
}

func parseVersion(jv jsonVersion) (fileVersion, error) {
	var fv fileVersion
	num, ok := parseVersionNum(jv.Version)
	if !ok {
		return fv, fmt.Errorf("\"version\" is not a decimal number 1..%d without leading zeros: %w", maxVersionNum, core.ErrMalformed)
	}
	fv.name, fv.num = jv.Version, num
	switch VersionState(jv.State) {
	case StateEnabled, StateDisabled, StateDestroyed:
		fv.state = VersionState(jv.State)
	default:
		return fv, fmt.Errorf("version %q: \"state\" is not enabled, disabled or destroyed: %w", fv.name, core.ErrMalformed)
	}
	t, err := time.Parse(time.RFC3339Nano, jv.Created)
	if err != nil || !strings.HasSuffix(jv.Created, "Z") {
		return fv, fmt.Errorf("version %q: \"created\" is not an RFC 3339 UTC time (ending in Z): %w", fv.name, core.ErrMalformed)
	}
	fv.created = t.UTC()
	if fv.state == StateDestroyed {
		if jv.Key != nil {
			return fv, fmt.Errorf("version %q is destroyed but still has a \"key\": %w", fv.name, core.ErrMalformed)
		}
		return fv, nil
	}
	if jv.Key == nil {
		return fv, fmt.Errorf("version %q is %s but has no \"key\": %w", fv.name, fv.state, core.ErrMalformed)
	}
	if fv.key, err = decodeKey(jv.Key); err != nil {
		return fv, fmt.Errorf("version %q: %w", fv.name, err)
	}
	return fv, nil
}

// decodeKey decodes the raw JSON string of a key: exactly 44 characters of
// canonical standard base64 (no escapes) giving 32 bytes.
func decodeKey(raw []byte) ([]byte, error) {
	const encLen = 44 // base64.StdEncoding.EncodedLen(keySize)
	if len(raw) != encLen+2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, fmt.Errorf("\"key\" is not the standard base64 of %d bytes: %w", keySize, core.ErrMalformed)
	}
	key := make([]byte, base64.StdEncoding.DecodedLen(encLen))
	n, err := base64.StdEncoding.Strict().Decode(key, raw[1:len(raw)-1])
	if err != nil || n != keySize {
		clear(key)
		return nil, fmt.Errorf("\"key\" is not the canonical standard base64 of %d bytes: %w", keySize, core.ErrMalformed)
	}
	return key[:keySize], nil
}

func parseVersionNum(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 9 || s[0] == '0' {
		return 0, false
	}
	var n uint64
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// jsonError describes an encoding/json error without quoting any value from
// the input (which could be key material).
func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("invalid JSON at byte %d: %w", se.Offset, core.ErrMalformed)
	case errors.As(err, &te):
		return fmt.Errorf("field %q at byte %d: not a valid %s: %w", te.Field, te.Offset, te.Type, core.ErrMalformed)
	default:
		return fmt.Errorf("invalid JSON: %w", core.ErrMalformed)
	}
}

// encodeFile returns the bytes of kf, sealed with s when s is not nil. The
// caller should clear the result after writing it.
func encodeFile(kf *keyFile, s *sealer) ([]byte, error) {
	keyID, err := json.Marshal(kf.keyID)
	if err != nil {
		return nil, err
	}
	if s == nil {
		b := make([]byte, 0, 128+len(keyID)+len(kf.versions)*192)
		b = append(b, "{\n  \"format\": \""+formatV1+"\",\n  \"key_id\": "...)
		b = append(b, keyID...)
		b = append(b, ",\n  \"current\": \""...)
		b = append(b, kf.current...)
		b = append(b, "\",\n  \"versions\": [\n"...)
		b = appendVersions(b, kf.versions, "    ", ",\n")
		b = append(b, "\n  ]\n}\n"...)
		return b, nil
	}
	inner := make([]byte, 0, 64+len(kf.versions)*192)
	inner = append(inner, "{\"current\": \""...)
	inner = append(inner, kf.current...)
	inner = append(inner, "\", \"versions\": ["...)
	inner = appendVersions(inner, kf.versions, "", ", ")
	inner = append(inner, "]}"...)
	defer clear(inner)
	sealed := make([]byte, nonceSize, nonceSize+len(inner)+tagSize)
	if _, err := rand.Read(sealed); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	sealed = s.aead.Seal(sealed, sealed[:nonceSize], inner, sealAD(kf.keyID))
	b := make([]byte, 0, 256+len(keyID)+base64.StdEncoding.EncodedLen(len(sealed)))
	b = append(b, "{\n  \"format\": \""+formatV1+"\",\n  \"key_id\": "...)
	b = append(b, keyID...)
	b = append(b, ",\n  \"kdf\": {\"name\": \"scrypt\", \"salt\": \""...)
	b = base64.StdEncoding.AppendEncode(b, s.kdf.salt)
	b = fmt.Appendf(b, "\", \"n\": %d, \"r\": %d, \"p\": %d},\n  \"sealed\": \"", s.kdf.n, s.kdf.r, s.kdf.p)
	b = base64.StdEncoding.AppendEncode(b, sealed)
	b = append(b, "\"\n}\n"...)
	return b, nil
}

func appendVersions(b []byte, vs []fileVersion, indent, sep string) []byte {
	for i, v := range vs {
		if i > 0 {
			b = append(b, sep...)
		}
		b = append(b, indent...)
		b = append(b, "{\"version\": \""...)
		b = append(b, v.name...)
		b = append(b, "\", \"state\": \""...)
		b = append(b, v.state...)
		b = append(b, "\", \"created\": \""...)
		b = v.created.UTC().AppendFormat(b, time.RFC3339Nano)
		if v.key != nil {
			b = append(b, "\", \"key\": \""...)
			b = base64.StdEncoding.AppendEncode(b, v.key)
		}
		b = append(b, "\"}"...)
	}
	return b
}
