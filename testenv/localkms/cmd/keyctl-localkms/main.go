// Command keyctl-localkms serves the local-kms AWS KMS emulator
// (github.com/nsmithuk/local-kms) on a loopback address only, for keyctl's
// tests. local-kms's own main always listens on 0.0.0.0; this harness reuses
// its request handler and database but binds the listener itself, refusing
// any address that is not loopback.
//
// It lives in its own Go module so that keyctl's main module does not depend
// on local-kms (or on aws-sdk-go v1, which local-kms uses).
//
// One deviation from local-kms, towards real KMS: when a Decrypt names a
// KeyId (or a ReEncrypt a SourceKeyId), local-kms decrypts with that key and
// ignores the key ARN written inside the ciphertext blob, so a blob whose ARN
// bytes were altered still opened, and a ciphertext shorter than a GCM nonce
// crashed the request. Real KMS authenticates the whole blob. The harness
// answers InvalidCiphertextException when the ARN inside the blob is not the
// key the request names, or when the blob is too short to hold a nonce and a
// tag, before local-kms sees the request.
//
// Usage:
//
//	keyctl-localkms -data DIR [-seed FILE] [-addr 127.0.0.1:0] [-account ID] [-region R]
//
// Once listening it prints one line to stdout, "listening on http://ADDR",
// and then stays silent on stdout; local-kms logs one line per request to
// stderr. SIGINT or SIGTERM stops it (dropping open connections) and closes the database.
//
// The seed file has local-kms's format (Keys.Symmetric.Aes[] with
// Metadata.KeyId, hex BackingKeys and an optional NextKeyRotation, plus
// Aliases[] with AliasName and TargetKeyId); keys and aliases that already
// exist in the data directory are kept.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nsmithuk/local-kms/src"
	"github.com/nsmithuk/local-kms/src/cmk"
	"github.com/nsmithuk/local-kms/src/config"
	"github.com/nsmithuk/local-kms/src/data"
	"github.com/nsmithuk/local-kms/src/service"
	"gopkg.in/yaml.v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "keyctl-localkms:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:0", "loopback address to listen on (port 0 picks a free one)")
	dataDir := flag.String("data", "", "data directory (goleveldb; one process per directory) (required)")
	seedPath := flag.String("seed", "", "seed YAML file with keys and aliases")
	account := flag.String("account", "111122223333", "AWS account id in ARNs")
	region := flag.String("region", "eu-west-2", "AWS region in ARNs")
	flag.Parse()
	if *dataDir == "" || flag.NArg() != 0 {
		flag.Usage()
		return errors.New("-data is required and no arguments are accepted")
	}
	if err := checkLoopback(*addr); err != nil {
		return err
	}

	config.AWSAccountId = *account
	config.AWSRegion = *region
	abs, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	config.DatabasePath = abs
	db := data.NewDatabase(abs)
	defer db.Close()

	if *seedPath != "" {
		if err := seed(*seedPath, db); err != nil {
			return err
		}
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if refuseForeignBlob(w, r, db) {
				return
			}
			src.HandleRequest(w, r, db)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	fmt.Printf("listening on http://%s\n", ln.Addr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-sig:
		// A test emulator: drop connections (clients may hold some open
		// mid-request) rather than wait for them.
		return srv.Close()
	}
}

// refuseForeignBlob answers InvalidCiphertextException for a Decrypt or
// ReEncrypt whose blob names another key than the request, or is too short,
// and reports whether it answered.
func refuseForeignBlob(w http.ResponseWriter, r *http.Request, db *data.Database) bool {
	target := r.Header.Get("X-Amz-Target")
	if r.Method != http.MethodPost || (target != "TrentService.Decrypt" && target != "TrentService.ReEncrypt") {
		return false
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return false
	}
	var in struct {
		CiphertextBlob []byte
		KeyId          *string
		SourceKeyId    *string
	}
	if json.Unmarshal(body, &in) != nil || len(in.CiphertextBlob) == 0 {
		return false // local-kms reports these itself
	}
	named := in.KeyId
	if target == "TrentService.ReEncrypt" {
		named = in.SourceKeyId
	}
	arn, _, ct, ok := service.UnpackCiphertextBlob(in.CiphertextBlob)
	bad := !ok || len(ct) < 12+16
	if !bad && named != nil {
		if want, found := resolveKey(*named, db); found && want != arn {
			bad = true
		}
	}
	if !bad {
		return false
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(http.StatusBadRequest)
	_, _ = io.WriteString(w, `{"__type":"InvalidCiphertextException","message":""}`)
	return true
}

// resolveKey returns the key ARN that a key id, key ARN, alias name or alias
// ARN names; found is false when it names nothing (local-kms then reports
// NotFoundException itself).
func resolveKey(id string, db *data.Database) (arn string, found bool) {
	if strings.Contains(id, "alias/") {
		a, err := db.LoadAlias(config.EnsureArn("", id))
		if err != nil {
			return "", false
		}
		id = a.TargetKeyId
	}
	return config.EnsureArn("key/", id), true
}

// checkLoopback refuses listen addresses that are not a loopback IP.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-addr %q: only a loopback IP address (such as 127.0.0.1) is allowed", addr)
	}
	return nil
}

// seed imports keys and aliases the way local-kms's own (unexported) seeding
// does, for the key types keyctl's tests use.
func seed(path string, db *data.Database) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var in struct {
		Keys struct {
			Symmetric struct {
				Aes []cmk.AesKey `yaml:"Aes"`
			} `yaml:"Symmetric"`
		} `yaml:"Keys"`
		Aliases []data.Alias `yaml:"Aliases"`
	}
	if err := yaml.UnmarshalStrict(b, &in); err != nil {
		return fmt.Errorf("seed %s: %w", path, err)
	}
	for i := range in.Keys.Symmetric.Aes {
		k := &in.Keys.Symmetric.Aes[i]
		if _, err := db.LoadKey(k.GetArn()); !errors.As(err, &data.KeyNotFoundError) {
			continue // already present
		}
		if err := db.SaveKey(k); err != nil {
			return fmt.Errorf("seed %s: key %s: %w", path, k.Metadata.KeyId, err)
		}
	}
	for _, a := range in.Aliases {
		a.AliasArn = config.ArnPrefix() + a.AliasName
		if _, err := db.LoadAlias(a.AliasArn); err == nil {
			continue
		}
		if err := db.SaveAlias(&a); err != nil {
			return fmt.Errorf("seed %s: alias %s: %w", path, a.AliasName, err)
		}
	}
	return nil
}
