// Package config loads keyctl's HCL configuration file, keyctl.hcl.
//
// The file names the providers (vaults) that hold KEKs, the keyring built
// from them (one primary provider and any number of decrypt-only ones) and
// where the keyset of DEKs is stored:
//
//	provider "localfile" "local" {
//	  key_file       = "kek.json"
//	  passphrase_env = "KEYCTL_PASSPHRASE"
//	}
//	keyring {
//	  primary      = "local"
//	  decrypt_only = []
//	}
//	keyset {
//	  file = "keyset.json"
//	}
//
// Each provider block carries attributes of its own, decoded according to
// the provider type given as the block's first label. Relative paths resolve
// against the directory of the configuration file. Secrets never appear in
// the file: a passphrase is named by the environment variable that holds it.
//
// Errors are HCL diagnostics. [Load] and [Parse] return them as an *[Error],
// which wraps [ErrInvalid] and renders each diagnostic as file:line,column
// with the offending source line. The schema is documented in docs/config.md
// and, attribute by attribute, in config.hcl.example at the repository root.
package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// DefaultFile is the configuration file name used when none is given.
const DefaultFile = "keyctl.hcl"

// EnvConfig names the environment variable that may hold the path of the
// configuration file.
const EnvConfig = "KEYCTL_CONFIG"

// MaxFileSize bounds the configuration file; a larger file is refused before
// it is parsed.
const MaxFileSize = 1 << 20

// Provider types this build knows. A later version adds types served by
// plugins.
const (
	// TypeLocalFile is a key file on local disk (providers/localfile).
	TypeLocalFile = "localfile"
)

// ErrInvalid is wrapped by every error that reports a problem in the
// configuration itself (as opposed to a file that cannot be read).
var ErrInvalid = errors.New("invalid configuration")

// ErrNotFound is wrapped by the error [Load] returns when the configuration
// file does not exist.
var ErrNotFound = errors.New("configuration file not found")

// Config is a loaded and validated configuration.
type Config struct {
	// Path is the absolute path of the file the configuration came from.
	Path string
	// Dir is the directory relative paths were resolved against.
	Dir string
	// Providers are the provider blocks in file order.
	Providers []*Provider
	// Keyring is the keyring block.
	Keyring Keyring
	// Keyset is the keyset block.
	Keyset Keyset
}

// Provider is one provider block: a named instance of a provider type.
type Provider struct {
	// Type is the provider type, the block's first label ("localfile").
	Type string
	// Name is the provider's name, the block's second label, used by the
	// keyring block to refer to it. Names are unique in a file.
	Name string
	// LocalFile holds the settings of a provider of type "localfile"; nil
	// for other types.
	LocalFile *LocalFile
	// Range is where the block is declared, for messages.
	Range hcl.Range
}

// LocalFile holds the attributes of a "localfile" provider block.
type LocalFile struct {
	// KeyFile is the absolute path of the key file.
	KeyFile string
	// PassphraseEnv names the environment variable holding the key file's
	// passphrase; empty when none is configured. The passphrase itself never
	// appears in the configuration.
	PassphraseEnv string
}

// Keyring is the keyring block.
type Keyring struct {
	// Primary is the name of the provider that wraps new DEKs.
	Primary string
	// DecryptOnly are the names of providers used only to unwrap.
	DecryptOnly []string
}

// Keyset is the keyset block.
type Keyset struct {
	// File is the absolute path of the keyset file.
	File string
}

// Provider returns the provider block named name.
func (c *Config) Provider(name string) (*Provider, bool) {
	for _, p := range c.Providers {
		if p.Name == name {
			return p, true
		}
	}
	return nil, false
}

// Error reports invalid configuration as HCL diagnostics. It wraps
// [ErrInvalid].
type Error struct {
	// Diagnostics are the error diagnostics, in the order HCL found them.
	Diagnostics hcl.Diagnostics
	files       map[string]*hcl.File
}

// Diag is a diagnostic flattened for display or JSON output.
type Diag struct {
	// File, Line and Column locate the problem; File is empty when the
	// diagnostic has no source location.
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
	Column int    `json:"column,omitempty"`
	// Summary and Detail describe it.
	Summary string `json:"summary"`
	Detail  string `json:"detail,omitempty"`
	// Snippet is the source line the diagnostic points at, trimmed, with
	// values of secret-looking attributes redacted.
	Snippet string `json:"snippet,omitempty"`
}

// Diags returns the diagnostics flattened, with source snippets.
func (e *Error) Diags() []Diag {
	out := make([]Diag, 0, len(e.Diagnostics))
	for _, d := range e.Diagnostics {
		fd := Diag{Summary: d.Summary, Detail: d.Detail}
		if d.Subject != nil {
			fd.File = d.Subject.Filename
			fd.Line = d.Subject.Start.Line
			fd.Column = d.Subject.Start.Column
			if _, hide := hcl.DiagnosticExtra[noSnippet](d); !hide {
				if f, ok := e.files[d.Subject.Filename]; ok && f != nil {
					fd.Snippet = sourceLine(f.Bytes, d.Subject.Start.Line)
				}
			}
		}
		out = append(out, fd)
	}
	return out
}

// String renders d on one line: "file:line,col: summary; detail; in: snippet".
func (d Diag) String() string {
	var b strings.Builder
	if d.File != "" {
		fmt.Fprintf(&b, "%s:%d,%d: ", d.File, d.Line, d.Column)
	}
	b.WriteString(strings.TrimSuffix(d.Summary, "."))
	if d.Detail != "" {
		b.WriteString("; ")
		b.WriteString(strings.TrimSuffix(d.Detail, "."))
	}
	if d.Snippet != "" {
		fmt.Fprintf(&b, "; in: %s", d.Snippet)
	}
	return b.String()
}

// Error renders every diagnostic on one line, separated by " | ".
func (e *Error) Error() string {
	ds := e.Diags()
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.String()
	}
	if len(parts) == 0 {
		return ErrInvalid.Error()
	}
	return strings.Join(parts, " | ")
}

// Unwrap returns ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }

// noSnippet marks a diagnostic whose source line must not be shown (it may
// hold a secret).
type noSnippet struct{}

const maxSnippet = 120

// secretAttr matches attribute names whose values must not be echoed.
var secretAttr = regexp.MustCompile(`(?i)^\s*"?([a-z0-9_-]*(pass|secret|pin|token|password|credential|private)[a-z0-9_-]*)"?\s*=`)

// sourceLine returns line n (1-based) of src, trimmed and shortened, with
// the value of a secret-looking attribute redacted.
func sourceLine(src []byte, n int) string {
	if n < 1 {
		return ""
	}
	lines := strings.SplitN(string(src), "\n", n+1)
	if len(lines) < n {
		return ""
	}
	l := strings.TrimSpace(strings.TrimSuffix(lines[n-1], "\r"))
	if m := secretAttr.FindStringSubmatch(l); m != nil && !strings.HasSuffix(strings.ToLower(m[1]), "_env") {
		l = m[0] + " <redacted>"
	}
	l = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, l)
	if len(l) > maxSnippet {
		l = l[:maxSnippet] + "..."
	}
	return strings.ToValidUTF8(l, "?")
}

// Load reads and parses the configuration file at path. A missing file gives
// an error wrapping [ErrNotFound]; invalid content gives an *[Error].
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("config %s: %w", path, ErrNotFound)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	src, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	if len(src) > MaxFileSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes: %w", path, MaxFileSize, ErrInvalid)
	}
	return Parse(src, path)
}

// Parse parses configuration source. filename is used in diagnostics, and
// its directory is the base of relative paths in the file.
func Parse(src []byte, filename string) (*Config, error) {
	abs, err := filepath.Abs(filename)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	parser := hclparse.NewParser()
	file, diags := parser.ParseHCL(src, filename)
	fail := func(d hcl.Diagnostics) error {
		var errs hcl.Diagnostics
		for _, x := range d {
			if x.Severity == hcl.DiagError {
				errs = append(errs, x)
			}
		}
		return &Error{Diagnostics: errs, files: parser.Files()}
	}
	if diags.HasErrors() {
		return nil, fail(diags)
	}
	cfg, diags := decode(file, filename)
	if diags.HasErrors() {
		return nil, fail(diags)
	}
	cfg.Path = abs
	cfg.Dir = filepath.Dir(abs)
	cfg.resolve()
	return cfg, nil
}

// fileSchema is the HCL layout of the whole file.
type fileSchema struct {
	Providers []*providerSchema `hcl:"provider,block"`
	Keyrings  []*keyringSchema  `hcl:"keyring,block"`
	Keysets   []*keysetSchema   `hcl:"keyset,block"`
}

type providerSchema struct {
	Type   string   `hcl:"type,label"`
	Name   string   `hcl:"name,label"`
	Remain hcl.Body `hcl:",remain"`

	DeclRange hcl.Range
}

type keyringSchema struct {
	Primary     string   `hcl:"primary"`
	DecryptOnly []string `hcl:"decrypt_only,optional"`

	DeclRange hcl.Range
}

type keysetSchema struct {
	File string `hcl:"file"`

	DeclRange hcl.Range
}

type localFileSchema struct {
	KeyFile       string  `hcl:"key_file"`
	PassphraseEnv *string `hcl:"passphrase_env"`
}

// providerDecoders decodes a provider block's own attributes, by provider
// type. It is a fixed table, not a registry filled at init time.
var providerDecoders = map[string]func(p *Provider, body hcl.Body, at hcl.Range) hcl.Diagnostics{
	TypeLocalFile: decodeLocalFile,
}

// KnownProviderTypes returns the provider types this build can configure,
// sorted.
func KnownProviderTypes() []string {
	out := make([]string, 0, len(providerDecoders))
	for t := range providerDecoders {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

var (
	envName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	provName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}$`)
)

func decode(file *hcl.File, filename string) (*Config, hcl.Diagnostics) {
	var fs fileSchema
	diags := gohcl.DecodeBody(file.Body, nil, &fs)
	if diags.HasErrors() {
		return nil, diags
	}
	// Block ranges: gohcl does not fill DeclRange, so read them from the
	// body's blocks in order.
	content, _, _ := file.Body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
		{Type: "provider", LabelNames: []string{"type", "name"}},
		{Type: "keyring"},
		{Type: "keyset"},
	}})
	var pRanges, krRanges, ksRanges []hcl.Range
	attrRanges := map[string]hcl.Range{} // keyring attribute -> expression range
	for _, b := range content.Blocks {
		switch b.Type {
		case "provider":
			pRanges = append(pRanges, b.DefRange)
		case "keyring":
			krRanges = append(krRanges, b.DefRange)
			if len(krRanges) == 1 {
				kc, _, _ := b.Body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "primary"}, {Name: "decrypt_only"}}})
				if kc != nil {
					for n, a := range kc.Attributes {
						attrRanges[n] = a.Expr.Range()
					}
				}
			}
		case "keyset":
			ksRanges = append(ksRanges, b.DefRange)
		}
	}
	setRanges(fs.Providers, pRanges, func(p *providerSchema, r hcl.Range) { p.DeclRange = r })
	setRanges(fs.Keyrings, krRanges, func(k *keyringSchema, r hcl.Range) { k.DeclRange = r })
	setRanges(fs.Keysets, ksRanges, func(k *keysetSchema, r hcl.Range) { k.DeclRange = r })

	fileStart := hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos}
	// Diagnostics about a missing block point at the file's start, where
	// a snippet would mislead.
	var fileLevel noSnippet
	cfg := &Config{}
	byName := map[string]*Provider{}
	if len(fs.Providers) == 0 {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Missing provider block",
			Detail:   fmt.Sprintf("At least one provider block is required, for example: provider %q \"local\" { key_file = \"kek.json\" }.", TypeLocalFile),
			Subject:  &fileStart,
			Extra:    fileLevel,
		})
	}
	for _, ps := range fs.Providers {
		at := ps.DeclRange
		if !provName.MatchString(ps.Name) {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Invalid provider name",
				Detail:   fmt.Sprintf("Provider name %q must start with a letter and hold only letters, digits, '-' and '_' (at most 64).", ps.Name),
				Subject:  &at,
			})
			continue
		}
		if prev, dup := byName[ps.Name]; dup {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Duplicate provider name",
				Detail:   fmt.Sprintf("A provider named %q is already declared at %s; provider names must be unique.", ps.Name, prev.Range),
				Subject:  &at,
			})
			continue
		}
		dec, ok := providerDecoders[ps.Type]
		if !ok {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Unknown provider type",
				Detail:   fmt.Sprintf("Provider type %q is not known to this build; known types: %s.", ps.Type, strings.Join(KnownProviderTypes(), ", ")),
				Subject:  &at,
			})
			continue
		}
		p := &Provider{Type: ps.Type, Name: ps.Name, Range: at}
		pd := dec(p, ps.Remain, at)
		diags = append(diags, pd...)
		if pd.HasErrors() {
			continue
		}
		byName[p.Name] = p
		cfg.Providers = append(cfg.Providers, p)
	}

	switch len(fs.Keyrings) {
	case 0:
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Missing keyring block",
			Detail:   "A keyring block is required: keyring { primary = \"<provider name>\" }.",
			Subject:  &fileStart,
			Extra:    fileLevel,
		})
	case 1:
		kr := fs.Keyrings[0]
		at := kr.DeclRange
		cfg.Keyring = Keyring{Primary: kr.Primary, DecryptOnly: kr.DecryptOnly}
		seen := map[string]bool{}
		for i, name := range append([]string{kr.Primary}, kr.DecryptOnly...) {
			at := at
			attr := "primary"
			if i > 0 {
				attr = "decrypt_only"
			}
			if r, ok := attrRanges[attr]; ok {
				at = r
			}
			if seen[name] {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Duplicate provider in keyring",
					Detail:   fmt.Sprintf("Provider %q is named more than once in the keyring (primary and decrypt_only together must be distinct).", name),
					Subject:  &at,
				})
				continue
			}
			seen[name] = true
			if _, ok := byName[name]; !ok && len(fs.Providers) > 0 && !hasProviderNamed(fs.Providers, name) {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Unknown provider name",
					Detail:   fmt.Sprintf("The keyring names provider %q, but no provider block has that name; declared: %s.", name, declared(fs.Providers)),
					Subject:  &at,
				})
			}
		}
	default:
		at := fs.Keyrings[1].DeclRange
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Duplicate keyring block",
			Detail:   fmt.Sprintf("Only one keyring block is allowed; the first is at %s.", fs.Keyrings[0].DeclRange),
			Subject:  &at,
		})
	}

	switch len(fs.Keysets) {
	case 0:
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Missing keyset block",
			Detail:   "A keyset block is required: keyset { file = \"keyset.json\" }.",
			Subject:  &fileStart,
			Extra:    fileLevel,
		})
	case 1:
		ks := fs.Keysets[0]
		at := ks.DeclRange
		if strings.TrimSpace(ks.File) == "" {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Empty keyset file",
				Detail:   "The keyset block's file attribute must name a file.",
				Subject:  &at,
			})
		}
		cfg.Keyset = Keyset{File: ks.File}
	default:
		at := fs.Keysets[1].DeclRange
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Duplicate keyset block",
			Detail:   fmt.Sprintf("Only one keyset block is allowed; the first is at %s.", fs.Keysets[0].DeclRange),
			Subject:  &at,
		})
	}
	return cfg, diags
}

func setRanges[T any](items []*T, ranges []hcl.Range, set func(*T, hcl.Range)) {
	for i, it := range items {
		if i < len(ranges) {
			set(it, ranges[i])
		}
	}
}

func hasProviderNamed(ps []*providerSchema, name string) bool {
	for _, p := range ps {
		if p.Name == name {
			return true
		}
	}
	return false
}

func declared(ps []*providerSchema) string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = fmt.Sprintf("%q", p.Name)
	}
	return strings.Join(names, ", ")
}

// decodeLocalFile decodes the attributes of a "localfile" provider block. A
// literal passphrase attribute is refused: secrets never go in the file.
func decodeLocalFile(p *Provider, body hcl.Body, at hcl.Range) hcl.Diagnostics {
	var diags hcl.Diagnostics
	content, rest, d := body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "passphrase"}}})
	diags = append(diags, d...)
	if content != nil {
		if a, ok := content.Attributes["passphrase"]; ok {
			r := a.NameRange
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Secret in configuration",
				Detail:   fmt.Sprintf("Provider %q: a passphrase is never written in the configuration; set passphrase_env to the name of an environment variable that holds it, or leave it out to be prompted on a terminal.", p.Name),
				Subject:  &r,
				Extra:    noSnippet{},
			})
			return diags
		}
	}
	if rest == nil {
		return diags
	}
	var lf localFileSchema
	diags = append(diags, gohcl.DecodeBody(rest, nil, &lf)...)
	if diags.HasErrors() {
		return diags
	}
	if strings.TrimSpace(lf.KeyFile) == "" {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Empty key_file",
			Detail:   fmt.Sprintf("Provider %q: key_file must name the key file.", p.Name),
			Subject:  &at,
		})
	}
	out := &LocalFile{KeyFile: lf.KeyFile}
	if lf.PassphraseEnv != nil {
		if !envName.MatchString(*lf.PassphraseEnv) {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Invalid passphrase_env",
				Detail:   fmt.Sprintf("Provider %q: passphrase_env must be the name of an environment variable ([A-Za-z_][A-Za-z0-9_]*), not the passphrase itself.", p.Name),
				Subject:  &at,
				Extra:    noSnippet{},
			})
		}
		out.PassphraseEnv = *lf.PassphraseEnv
	}
	p.LocalFile = out
	return diags
}

// resolve makes relative paths absolute against c.Dir.
func (c *Config) resolve() {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(c.Dir, p)
	}
	for _, p := range c.Providers {
		if p.LocalFile != nil {
			p.LocalFile.KeyFile = abs(p.LocalFile.KeyFile)
		}
	}
	c.Keyset.File = abs(c.Keyset.File)
}
