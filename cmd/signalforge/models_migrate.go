package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/signalforge/signalforge/registry"
)

const migrateSynopsis = "--from SRC --to DST [--dry-run] [--json]"

// migrateAbout and migrateExamples are printed by `signalforge models
// migrate -h`.
const migrateAbout = `Copies a whole registry from SRC into DST: every version with its metrics,
tags and lineage, every artifact, and the whole audit log with its sequence
numbers, so history, rollback and watchers carry on in DST as they did in SRC.
SRC and DST are registry folders (a new DST folder is created) or PostgreSQL
URLs (postgres://user@host:5432/db?sslmode=…), either way round.

Every artifact is checked against its sha256 as it is read from SRC; one that
does not match stops the migration, naming it, before anything is imported.
Models and events are imported in one transaction, then DST is verified:
the same models, versions and events, and every artifact re-read from DST
matches its sha256.

DST must be empty. Running the command again on a DST that already holds
exactly SRC copies nothing ("already migrated"); a DST holding anything else,
or an earlier migration of an SRC that has changed since, is refused. Stop
the processes that write to SRC while it runs.`

var migrateExamples = []example{
	{"see what would be copied (SRC's artifacts are checked; nothing is written)",
		"signalforge models migrate --from models --to /srv/registry --dry-run"},
	{"copy the registry folder ./models into a new folder",
		"signalforge models migrate --from models --to /srv/registry"},
	{"move ./models into PostgreSQL, for replicas on several machines",
		"signalforge models migrate --from models --to 'postgres://signalforge@db:5432/registry?sslmode=verify-full'"},
}

// migrateOutput is what --json prints: the report and where from and to.
type migrateOutput struct {
	From      string  `json:"from"`
	To        string  `json:"to"`
	ElapsedMS float64 `json:"elapsed_ms"`
	registry.MigrateReport
}

func modelsMigrate(ctx context.Context, e *env, mc *modelsCmd, args []string) error {
	fs := newFlagSet(e, "models migrate", migrateSynopsis)
	setUsage(e, fs, "models migrate", migrateSynopsis, migrateAbout, migrateExamples)
	from := fs.String("from", "", "the registry to copy: a folder (never created) or a postgres:// URL (required)")
	to := fs.String("to", "", "the registry to copy into: a folder, created if new, or a postgres:// URL; it must be empty (required)")
	dryRun := fs.Bool("dry-run", false, "check SRC and DST and report what would be copied; write nothing")
	fs.BoolVar(&mc.json, "json", false, "print the report as JSON (progress goes to stderr)")
	if _, err := modelsParse(fs, args, 0, 0); err != nil {
		return err
	}
	if *from == "" || *to == "" {
		fmt.Fprintln(e.stderr, "signalforge models migrate: --from and --to are required")
		fs.Usage()
		return errUsage
	}
	if migrateSameRegistry(*from, *to) {
		return fmt.Errorf("--from %s and --to %s are the same registry", registryName(*from), registryName(*to))
	}
	src, err := openStoreURL(ctx, *from, false)
	if err != nil {
		return fmt.Errorf("--from %s: %w", registryName(*from), modelsRepairHint(err, *from))
	}
	defer src.Close()

	var dst registry.Store
	created := false // DST is a folder this command created
	if *dryRun {
		dst, err = openStoreURL(ctx, *to, false)
		if nr := (*noRegistryError)(nil); errors.As(err, &nr) {
			// Nothing there yet: an empty stand-in, so that nothing is
			// written, not even an empty registry.
			dst, err = registry.NewMemStore(), nil
		}
	} else {
		if !strings.Contains(*to, "://") {
			_, statErr := os.Stat(*to)
			created = errors.Is(statErr, os.ErrNotExist)
		}
		dst, err = openStoreURL(ctx, *to, true)
	}
	if err != nil {
		return fmt.Errorf("--to %s: %w", registryName(*to), modelsRepairHint(err, *to))
	}
	defer dst.Close()

	progress := e.stdout
	if mc.json {
		progress = e.stderr
	}
	opts := registry.MigrateOptions{DryRun: *dryRun, Progress: func(p registry.MigrateProgress) {
		a := p.Artifact
		what := fmt.Sprintf("%d bytes copied", a.Copied)
		switch {
		case a.Present:
			what = "already in " + registryName(*to)
		case *dryRun:
			what = fmt.Sprintf("checked, %d bytes to copy", a.Size)
		}
		fmt.Fprintf(progress, "artifact %d/%d %s (%s): %s\n", p.Index, p.Total, strings.Join(a.Versions, ", "), modelsClip(a.SHA256, 13), what)
	}}
	start := time.Now()
	rep, err := registry.Migrate(ctx, src, dst, opts)
	elapsed := time.Since(start)
	if err != nil {
		if created {
			// Leave no half-made registry behind in a folder this
			// command created.
			dst.Close()
			os.RemoveAll(*to)
		}
		return err
	}
	if mc.json {
		return modelsJSON(e.stdout, migrateOutput{From: registryName(*from), To: registryName(*to), ElapsedMS: float64(elapsed.Microseconds()) / 1000, MigrateReport: rep})
	}
	migratePrint(e.stdout, registryName(*from), registryName(*to), rep, elapsed)
	return nil
}

// migratePrint prints the outcome of a migration.
func migratePrint(w io.Writer, from, to string, rep registry.MigrateReport, elapsed time.Duration) {
	what := fmt.Sprintf("%s, %s, %s (seq %d), %s", modelsCount(rep.Models, "model"), modelsCount(rep.Versions, "version"),
		modelsCount(rep.Events, "event"), rep.Seq, modelsCount(len(rep.Artifacts), "artifact"))
	switch {
	case rep.AlreadyMigrated:
		fmt.Fprintf(w, "already migrated: 0 copied; %s already holds %s's %s\n", to, from, what)
	case rep.DryRun:
		fmt.Fprintf(w, "dry run: would copy %s to %s: %s, %d bytes of artifacts to copy; nothing written\n", from, to, what, rep.BytesCopied)
		return
	default:
		how := "read whole"
		if rep.Streamed {
			how = "streamed"
		}
		fmt.Fprintf(w, "migrated %s to %s: %s, %d bytes copied (%s) in %s\n", from, to, what, rep.BytesCopied, how, elapsed.Round(time.Millisecond))
	}
	if rep.Verified {
		fmt.Fprintf(w, "verified: %s holds the same models, versions and audit log, and every artifact re-read from it matches its sha256\n", to)
	}
}

// migrateSameRegistry reports whether a and b name the same registry: the
// same URL, or the same folder (by path or by file identity).
func migrateSameRegistry(a, b string) bool {
	if a == b {
		return true
	}
	if strings.Contains(a, "://") || strings.Contains(b, "://") {
		return false
	}
	aa, err1 := filepath.Abs(a)
	ab, err2 := filepath.Abs(b)
	if err1 == nil && err2 == nil && aa == ab {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}
