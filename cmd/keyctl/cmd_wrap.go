package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/core"
)

// wrapInfo describes one stanza in JSON output.
type wrapInfo struct {
	Provider   string `json:"provider"`
	KeyID      string `json:"key_id"`
	KeyVersion string `json:"key_version"`
	Algorithm  string `json:"algorithm"`
	Size       int    `json:"size"`
}

func wrapInfos(wk *core.WrappedKey) []wrapInfo {
	out := make([]wrapInfo, len(wk.Stanzas))
	for i, s := range wk.Stanzas {
		out[i] = wrapInfo{Provider: s.Provider, KeyID: s.KeyID, KeyVersion: s.KeyVersion, Algorithm: s.Algorithm.String(), Size: len(s.Data)}
	}
	return out
}

// maxDEKFile bounds a --dek-file.
const maxDEKFile = 1024

// parseDEK reads a DEK file: exactly 32 raw bytes, or 64 hex digits with an
// optional final newline.
func parseDEK(b []byte) (core.DEK, error) {
	if len(b) == core.DEKSize {
		return core.DEK(bytes.Clone(b)), nil
	}
	t := bytes.TrimSuffix(b, []byte("\n"))
	t = bytes.TrimSuffix(t, []byte("\r"))
	if len(t) == 2*core.DEKSize {
		d := make(core.DEK, core.DEKSize)
		if _, err := hex.Decode(d, t); err == nil {
			return d, nil
		}
		d.Zero()
		return nil, fmt.Errorf("DEK file: 64 characters but not hex digits: %w", core.ErrMalformed)
	}
	return nil, fmt.Errorf("DEK file: %d bytes; want 32 raw bytes or 64 hex digits: %w", len(b), core.ErrMalformed)
}

type wrapResult struct {
	WrappedKey string     `json:"wrapped_key,omitempty"`
	Out        string     `json:"out,omitempty"`
	Binary     bool       `json:"binary"`
	Generated  bool       `json:"generated"`
	Wraps      []wrapInfo `json:"wraps"`
}

func (a *app) wrapCommand() *cobra.Command {
	var dekFile, out string
	var ctxPairs []string
	var binary, force bool
	c := &cobra.Command{
		Use:   "wrap [--dek-file FILE] [--context k=v ...] [--out FILE] [--binary]",
		Short: "Generate a new DEK, or wrap an existing one, under the primary KEK",
		Long: `Wrap a data key under the keyring's primary provider (its current KEK
version) and print the wrapped key in its text form (keyctl-wk1:...).

Without --dek-file a fresh DEK is generated (by the vault when it can, else
from crypto/rand). With --dek-file the DEK is read from FILE: exactly 32 raw
bytes, or 64 hex digits with an optional final newline.

The plaintext DEK is never printed; use 'keyctl unwrap' to get it back.
--context binds key=value pairs to the wrap: unwrap must give the same pairs.
--out writes the wrapped key to FILE atomically (mode 0600; an existing FILE is
refused unless --force, since overwriting a wrapped key can lose its DEK).
--binary writes the binary form instead of the text form.`,
		Example: `  keyctl wrap --out app.wk
  keyctl wrap --context app=billing --context env=prod > billing.wk
  keyctl wrap --dek-file dek.hex`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if out == "-" {
				return usagef("wrap: --out - is not stdout; leave --out out to print the wrapped key")
			}
			ec, err := parseContext(ctxPairs)
			if err != nil {
				return err
			}
			if binary && out == "" {
				if a.jsonOut {
					return usagef("--binary with --json needs --out FILE")
				}
				if a.stdoutIsTerminal() {
					return withHint(usagef("refusing to write a binary wrapped key to a terminal"), "pass --out FILE, or redirect stdout")
				}
			}
			var dek core.DEK
			if dekFile != "" {
				b, _, err := a.readInput(dekFile, maxDEKFile, func(n int) error {
					return fmt.Errorf("DEK file over %d bytes: %w", n, core.ErrMalformed)
				})
				if err != nil {
					return err
				}
				dek, err = parseDEK(b)
				clear(b)
				if err != nil {
					return fmt.Errorf("%s: %w", dekFile, err)
				}
				defer dek.Zero()
			}
			ring, err := a.keyring()
			if err != nil {
				return err
			}
			var wk *core.WrappedKey
			if dek != nil {
				wk, err = ring.Wrap(a.ctx, dek, ec)
			} else {
				var fresh core.DEK
				fresh, wk, err = ring.GenerateDEK(a.ctx, ec)
				fresh.Zero()
			}
			if err != nil {
				return err
			}
			var data []byte
			if binary {
				data, err = wk.MarshalBinary()
			} else {
				data, err = wk.MarshalText()
			}
			if err != nil {
				return err
			}
			res := wrapResult{Out: out, Binary: binary, Generated: dek == nil, Wraps: wrapInfos(wk)}
			if !binary {
				res.WrappedKey = string(data)
				data = append(data, '\n')
			}
			if out != "" {
				if err := writeNew(out, data, 0o600, force, "--force"); err != nil {
					return err
				}
			}
			switch {
			case a.jsonOut:
				a.emitJSON(res)
			case out != "":
				s := wk.Stanzas[0]
				fmt.Fprintf(a.stderr, "wrote %s (%s version %s)\n", out, s.Ref(), s.KeyVersion)
			default:
				_, _ = a.stdout.Write(data)
			}
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&dekFile, "dek-file", "", "wrap the DEK in FILE (32 raw bytes or 64 hex digits) instead of generating one")
	f.StringArrayVar(&ctxPairs, "context", nil, contextFlagUsage)
	f.StringVarP(&out, "out", "o", "", "write the wrapped key to FILE (atomic, mode 0600) instead of stdout")
	f.BoolVar(&binary, "binary", false, "write the binary form instead of the text form")
	f.BoolVar(&force, "force", false, "with --out, replace an existing FILE")
	return c
}

// Encodings of a revealed DEK.
const (
	encHex    = "hex"
	encBase64 = "base64"
	encRaw    = "raw"
)

// encodeDEK renders dek as hex, base64 or raw bytes for unwrap's output.
// The result has room for one more byte, so that appending the final newline
// does not copy the encoded DEK to a buffer the caller's clear cannot reach.
func encodeDEK(dek core.DEK, enc string) ([]byte, error) {
	switch enc {
	case encHex:
		out := make([]byte, hex.EncodedLen(len(dek)), hex.EncodedLen(len(dek))+1)
		hex.Encode(out, dek)
		return out, nil
	case encBase64:
		n := base64.StdEncoding.EncodedLen(len(dek))
		out := make([]byte, n, n+1)
		base64.StdEncoding.Encode(out, dek)
		return out, nil
	case encRaw:
		return append(make([]byte, 0, len(dek)+1), dek...), nil
	}
	return nil, usagef("--encoding %q: want hex, base64 or raw", enc)
}

type unwrapResult struct {
	Out      string     `json:"out,omitempty"`
	Encoding string     `json:"encoding"`
	DEK      string     `json:"dek,omitempty"`
	Wraps    []wrapInfo `json:"wraps"`
}

func (a *app) unwrapCommand() *cobra.Command {
	var out, encoding string
	var ctxPairs []string
	var reveal, force bool
	c := &cobra.Command{
		Use:   "unwrap [FILE|-] [--context k=v ...] (--out FILE | --reveal) [--encoding hex|base64|raw]",
		Short: "Unwrap a wrapped key and write its DEK to a file, or reveal it",
		Long: `Unwrap a wrapped key (text or binary form, from FILE or stdin) with the
configured keyring and output the plaintext DEK. The keyring routes by the
provider type, key id and KEK version recorded in the wrapped key.

The DEK is secret, so it is written only where you ask explicitly:
  --out FILE   to FILE, atomically with mode 0600 (an existing FILE is refused
               unless --force); default encoding raw (32 bytes);
  --reveal     to stdout; default encoding hex.
One of the two is required. --context must repeat the pairs given at wrap time.`,
		Example: `  keyctl unwrap app.wk --out dek.bin
  keyctl unwrap app.wk --reveal --encoding base64
  keyctl unwrap --context app=billing --reveal < billing.wk`,
		Args: cobra.MaximumNArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if out == "" && !reveal {
				return withHint(usagef("unwrap: say where the plaintext DEK goes"), "pass --out FILE (written with mode 0600) or --reveal to print it on stdout")
			}
			if out != "" && reveal {
				return usagef("unwrap: --out and --reveal are exclusive")
			}
			if out == "-" {
				return withHint(usagef("unwrap: --out - is not stdout"), "use --reveal to print the DEK on stdout")
			}
			if encoding == "" {
				encoding = encRaw
				if reveal {
					encoding = encHex
				}
			}
			if _, err := encodeDEK(make(core.DEK, core.DEKSize), encoding); err != nil {
				return err
			}
			if a.jsonOut && reveal && encoding == encRaw {
				return usagef("unwrap: --json cannot carry --encoding raw; use hex or base64")
			}
			ec, err := parseContext(ctxPairs)
			if err != nil {
				return err
			}
			wk, _, err := a.readWrappedKey(argOr(args, ""))
			if err != nil {
				return err
			}
			ring, err := a.keyring()
			if err != nil {
				return err
			}
			dek, err := ring.Unwrap(a.ctx, wk, ec)
			if err != nil {
				return err
			}
			defer dek.Zero()
			enc, err := encodeDEK(dek, encoding)
			if err != nil {
				return err
			}
			defer clear(enc)
			res := unwrapResult{Out: out, Encoding: encoding, Wraps: wrapInfos(wk)}
			if out != "" {
				data := enc
				if encoding != encRaw {
					data = append(enc, '\n')
				}
				if err := writeNew(out, data, 0o600, force, "--force"); err != nil {
					return err
				}
				if a.jsonOut {
					a.emitJSON(res)
				} else {
					fmt.Fprintf(a.stderr, "wrote the DEK to %s (mode 0600, %s)\n", out, encoding)
				}
				return nil
			}
			if a.jsonOut {
				res.DEK = string(enc)
				a.emitJSON(res)
				return nil
			}
			if encoding != encRaw {
				enc = append(enc, '\n')
			}
			_, _ = a.stdout.Write(enc)
			return nil
		}),
	}
	f := c.Flags()
	f.StringVarP(&out, "out", "o", "", "write the DEK to FILE (atomic, mode 0600)")
	f.BoolVar(&reveal, "reveal", false, "print the DEK on stdout")
	f.StringVar(&encoding, "encoding", "", "DEK encoding: hex, base64 or raw (default raw with --out, hex with --reveal)")
	f.StringArrayVar(&ctxPairs, "context", nil, contextFlagUsage)
	f.BoolVar(&force, "force", false, "with --out, replace an existing FILE")
	_ = c.RegisterFlagCompletionFunc("encoding", cobra.FixedCompletions([]string{encHex, encBase64, encRaw}, cobra.ShellCompDirectiveNoFileComp))
	return c
}

func argOr(args []string, def string) string {
	if len(args) > 0 {
		return args[0]
	}
	return def
}

// readWrappedKey reads and parses one wrapped key from FILE or stdin. It
// reports whether the input was in binary form.
func (a *app) readWrappedKey(arg string) (*core.WrappedKey, bool, error) {
	b, name, err := a.readInput(arg, core.MaxWrappedKeyText+64, func(n int) error {
		return fmt.Errorf("wrapped key over %d bytes: %w", n, core.ErrMalformed)
	})
	if err != nil {
		return nil, false, err
	}
	wk, err := core.ParseWrappedKey(b)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", name, err)
	}
	return wk, core.IsBinaryWrappedKey(b), nil
}
