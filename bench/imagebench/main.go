// Command imagebench measures goldvm's one-pass image fetch (download,
// hash, decompress and unpack at once) against doing the same steps one
// after another with standard tools, and against the slowest single step.
//
// It generates a disk image that looks like a real one (random blocks,
// zero blocks and compressible text blocks), packages it as tar.gz, tar.zst
// and zip, serves the packages from a loopback HTTP server in a child
// process and prints a table of times and ratios. Run it through
// bench/fetch.sh.
package main

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/goldvm/goldvm/internal/image"
	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// cpuProfile, if set, switches to profiling mode: only goldvm's fetches
// run, under the CPU profiler (the HTTP server is another process).
var cpuProfile string

// traceFile, if set with cpuProfile, receives an execution trace.
var traceFile string

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		serve(os.Args[2])
		return
	}
	work := flag.String("work", filepath.Join(os.TempDir(), "goldvm-bench"), "work directory")
	sizeMiB := flag.Int("size-mib", 1024, "size of the disk image in MiB")
	formats := flag.String("formats", "tar.gz,tar.zst,zip", "packages to measure")
	reps := flag.Int("reps", 2, "repetitions; the minimum of each figure is reported")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "only run goldvm's fetches, reps times each, and write their CPU profile to this file")
	flag.StringVar(&traceFile, "trace", "", "with -cpuprofile: also write an execution trace (go tool trace) to this file")
	flag.Parse()
	if err := run(*work, int64(*sizeMiB)<<20, strings.Split(*formats, ","), max(*reps, 1)); err != nil {
		log.Fatal(err)
	}
}

// serve runs the loopback file server (sendfile, Range support) and prints
// its address on stdout.
func serve(dir string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ln.Addr().String())
	log.Fatal(http.Serve(ln, http.FileServer(http.Dir(dir))))
}

func run(work string, size int64, formats []string, reps int) error {
	pkgDir := filepath.Join(work, "pkg")
	if err := os.MkdirAll(pkgDir, 0o755); err != nil {
		return err
	}
	start := time.Now()
	if err := prepare(pkgDir, size); err != nil {
		return err
	}
	fmt.Printf("prepared %d MiB image and packages in %s\n", size>>20, time.Since(start).Round(time.Millisecond))

	srv := exec.Command(os.Args[0], "serve", pkgDir)
	out, err := srv.StdoutPipe()
	if err != nil {
		return err
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	base := "http://" + strings.TrimSpace(addr) + "/"

	type row struct {
		format                                string
		goldvm, stream, seq, seqSync, slowest time.Duration
		slowName                              string
		download, hash, decompress, untarred  time.Duration
		// The same stages done by goldvm's own code (Go's HTTP client and
		// SHA-256; decompress and write are the same as above).
		downloadGo, hashGo time.Duration
		slowestGo          time.Duration
		slowNameGo         string
		// CPU time used on the whole machine: by goldvm's fetch, and by
		// each stage alone (see stageWork); bound is their sum spread over
		// all CPUs, the shortest a one-pass fetch can take here.
		goldvmWork time.Duration
		stages     stageWork
	}
	var rows []row
	if cpuProfile != "" {
		return profile(base, pkgDir, work, formats, reps)
	}
	for _, f := range formats {
		name := "disk." + f
		p := filepath.Join(pkgDir, name)
		sum, err := fileSHA256(p)
		if err != nil {
			return err
		}
		url := base + name
		once := func() (row, error) {
			r := row{format: f}

			// goldvm: one pass.
			r.goldvm, r.stream, r.goldvmWork, err = fetchGold(work, url, sum)
			if err != nil {
				return r, fmt.Errorf("goldvm %s: %w", f, err)
			}
			removeStore(filepath.Join(work, "store"))

			// Baseline: curl, then sha256sum, then unpack (then fsync, as goldvm does).
			dl := filepath.Join(work, "dl."+f)
			outDir := filepath.Join(work, "out")
			extract := fmt.Sprintf("tar -xf %q -C %q", dl, outDir)
			if f == "zip" {
				extract = fmt.Sprintf("unzip -q %q -d %q", dl, outDir)
			}
			seq := fmt.Sprintf("curl -sf -o %q %q && sha256sum %q >/dev/null && mkdir -p %q && %s", dl, url, dl, outDir, extract)
			for i, cmd := range []string{seq, seq + fmt.Sprintf(" && sync %q/disk.raw", outDir)} {
				os.RemoveAll(outDir)
				os.Remove(dl)
				d, err := timed(func() error { return sh(cmd) })
				if err != nil {
					return r, fmt.Errorf("baseline %s: %w", f, err)
				}
				if i == 0 {
					r.seq = d
				} else {
					r.seqSync = d
				}
			}
			os.RemoveAll(outDir)

			// Single stages alone.
			if r.download, err = timed(func() error { return sh(fmt.Sprintf("curl -sf -o /dev/null %q", url)) }); err != nil {
				return r, err
			}
			if r.hash, err = timed(func() error { return sh(fmt.Sprintf("sha256sum %q >/dev/null", dl)) }); err != nil {
				return r, err
			}
			if r.downloadGo, err = timed(func() error { return httpDiscard(url) }); err != nil {
				return r, err
			}
			if r.hashGo, err = timed(func() error { _, err := fileSHA256(dl); return err }); err != nil {
				return r, err
			}
			pkgData, err := os.ReadFile(dl)
			if err != nil {
				return r, err
			}
			r.decompress, err = timed(func() error { return decompressBytes(pkgData, f) })
			pkgData = nil
			releaseMemory()
			if err != nil {
				return r, fmt.Errorf("decompress %s: %w", f, err)
			}
			tarFile := filepath.Join(pkgDir, "disk.tar")
			if r.untarred, err = timed(func() error {
				return sh(fmt.Sprintf("mkdir -p %q && tar -xf %q -C %q", outDir, tarFile, outDir))
			}); err != nil {
				return r, err
			}
			os.RemoveAll(outDir)
			os.Remove(dl)
			if r.stages, err = measureStageWork(url, p, filepath.Join(pkgDir, "disk.raw"), f, work); err != nil {
				return r, err
			}
			return r, nil
		}
		// Each figure is the minimum over the repetitions: on a shared
		// machine the minimum is the least disturbed measurement.
		var r row
		for i := range reps {
			m, err := once()
			if err != nil {
				return err
			}
			if i == 0 {
				r = m
				continue
			}
			for _, p := range []struct {
				dst *time.Duration
				v   time.Duration
			}{
				{&r.goldvm, m.goldvm}, {&r.stream, m.stream}, {&r.seq, m.seq}, {&r.seqSync, m.seqSync},
				{&r.download, m.download}, {&r.hash, m.hash}, {&r.decompress, m.decompress}, {&r.untarred, m.untarred},
				{&r.downloadGo, m.downloadGo}, {&r.hashGo, m.hashGo}, {&r.goldvmWork, m.goldvmWork},
				{&r.stages.download, m.stages.download}, {&r.stages.hash, m.stages.hash},
				{&r.stages.decompress, m.stages.decompress}, {&r.stages.write, m.stages.write},
			} {
				*p.dst = min(*p.dst, p.v)
			}
		}
		r.slowest, r.slowName = slowestOf([]string{"download", "sha256", "decompress", "write"},
			[]time.Duration{r.download, r.hash, r.decompress, r.untarred})
		r.slowestGo, r.slowNameGo = slowestOf([]string{"download", "sha256", "decompress", "write"},
			[]time.Duration{r.downloadGo, r.hashGo, r.decompress, r.untarred})
		rows = append(rows, r)
		fmt.Printf("%s: goldvm %s (stream done after %s, then verify+fsync+publish), sequential %s (+sync %s), stages: download %s (curl) %s (Go), sha256 %s (sha256sum) %s (Go), decompress %s, write %s\n",
			f, sec(r.goldvm), sec(r.stream), sec(r.seq), sec(r.seqSync), sec(r.download), sec(r.downloadGo), sec(r.hash), sec(r.hashGo), sec(r.decompress), sec(r.untarred))
	}

	fmt.Printf("\n%d MiB image, %d CPUs, best of %d, warm page cache, loopback HTTP; goldvm fsyncs its files, seq does not, seq+sync does\n", size>>20, numCPU(), reps)
	fmt.Printf("slowest: the slowest stage alone with the baseline's tools (curl, sha256sum, goldvm's decoder, tar -x);\n")
	fmt.Printf("slow-go: the same with goldvm's own download and SHA-256 code\n")
	fmt.Printf("%-8s %9s %9s %9s %9s %-10s %9s %-10s %11s %11s %12s %12s\n", "format", "goldvm", "seq", "seq+sync", "slowest", "(stage)",
		"slow-go", "(stage)", "goldvm/seq", "goldvm/s+s", "goldvm/slow", "goldvm/sl-go")
	for _, r := range rows {
		fmt.Printf("%-8s %9s %9s %9s %9s %-10s %9s %-10s %11.2f %11.2f %12.2f %12.2f\n", r.format, sec(r.goldvm), sec(r.seq), sec(r.seqSync),
			sec(r.slowest), r.slowName, sec(r.slowestGo), r.slowNameGo, ratio(r.goldvm, r.seq), ratio(r.goldvm, r.seqSync),
			ratio(r.goldvm, r.slowest), ratio(r.goldvm, r.slowestGo))
	}

	// How far these CPUs can go: the CPU time the stages need even alone
	// (server and kernel included) has to fit on numCPU CPUs.
	cpus := numCPU()
	fmt.Printf("\nCPU work on the whole machine (all CPUs; loopback server and kernel threads included), each stage alone, data in memory:\n")
	fmt.Printf("%-8s %9s %9s %9s %9s %9s %9s %9s %11s %12s %12s\n", "format", "download", "sha256", "decomp", "write", "sum", "bound", "goldvm", "bound/slow", "bound/sl-go", "goldvm/bound")
	for _, r := range rows {
		sum := r.stages.sum()
		bound := sum / time.Duration(cpus)
		fmt.Printf("%-8s %9s %9s %9s %9s %9s %9s %9s %11.2f %12.2f %12.2f\n", r.format, sec(r.stages.download), sec(r.stages.hash),
			sec(r.stages.decompress), sec(r.stages.write), sec(sum), sec(bound), sec(r.goldvmWork),
			ratio(bound, r.slowest), ratio(bound, r.slowestGo), ratio(r.goldvm, bound))
	}
	fmt.Printf("bound: the summed work over %d CPUs, the shortest any one-pass fetch could take here even with perfect overlap;\n", cpus)
	fmt.Printf("a bound/slow or bound/sl-go above 1.15 means goldvm/slow or goldvm/sl-go cannot reach 1.15 on this machine\n")
	return nil
}

// profile fetches each format reps times with goldvm under the CPU
// profiler and prints the times.
func profile(base, pkgDir, work string, formats []string, reps int) error {
	pf, err := os.Create(cpuProfile)
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := pprof.StartCPUProfile(pf); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	if traceFile != "" {
		tf, err := os.Create(traceFile)
		if err != nil {
			return err
		}
		defer tf.Close()
		if err := trace.Start(tf); err != nil {
			return err
		}
		defer trace.Stop()
	}
	for _, f := range formats {
		sum, err := fileSHA256(filepath.Join(pkgDir, "disk."+f))
		if err != nil {
			return err
		}
		for range reps {
			cpu0 := cpuTime()
			d, stream, busy, err := fetchGold(work, base+"disk."+f, sum)
			if err != nil {
				return fmt.Errorf("goldvm %s: %w", f, err)
			}
			fmt.Printf("%s: goldvm %s (stream done after %s), %s of CPU in goldvm (emptying the store included), %s on the whole machine during the fetch\n",
				f, sec(d), sec(stream), sec(cpuTime()-cpu0), sec(busy))
		}
		removeStore(filepath.Join(work, "store"))
	}
	return nil
}

// fetchGold fetches url (sha256 sum) into an empty store under work with
// goldvm's image store, as the daemon does, and returns the whole time,
// the time until the stream was done (downloaded, hashed and unpacked;
// verifying, fsync and publishing follow) and the CPU time the whole
// machine spent meanwhile.
func fetchGold(work, url, sum string) (total, stream, busy time.Duration, err error) {
	storeDir := filepath.Join(work, "store")
	removeStore(storeDir)
	total, err = timed(func() error {
		busy0 := machineBusy()
		defer func() { busy = machineBusy() - busy0 }()
		st, err := image.NewStore(storeDir, image.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return err
		}
		defer st.Close()
		t0 := time.Now()
		_, err = st.Ensure(context.Background(), image.Spec{URL: url, Checksum: sum, ChecksumType: "sha256"}, func(p image.Progress) {
			if p.Phase == image.PhaseVerifying && stream == 0 {
				stream = time.Since(t0)
			}
		})
		return err
	})
	return total, stream, busy, err
}

// slowestOf returns the longest of ds and its name.
func slowestOf(names []string, ds []time.Duration) (time.Duration, string) {
	i := 0
	for j, d := range ds {
		if d > ds[i] {
			i = j
		}
	}
	return ds[i], names[i]
}

// httpDiscard downloads url to nowhere with Go's HTTP client, as goldvm
// does.
func httpDiscard(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	_, err = io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10))
	return err
}

// cpuTime returns the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func numCPU() int {
	n, _ := exec.Command("nproc").Output()
	var c int
	fmt.Sscan(string(n), &c)
	return c
}

func sec(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func ratio(a, b time.Duration) float64 { return a.Seconds() / b.Seconds() }

// timed runs f after flushing dirty pages (so earlier steps' writeback
// does not land in this measurement) and returns how long f took.
func timed(f func() error) (time.Duration, error) {
	if err := exec.Command("sync").Run(); err != nil {
		return 0, err
	}
	t := time.Now()
	err := f()
	return time.Since(t), err
}

func sh(cmd string) error {
	c := exec.Command("sh", "-c", cmd)
	c.Stderr = os.Stderr
	return c.Run()
}

// removeStore removes a store directory whose images are read-only.
func removeStore(dir string) {
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	os.RemoveAll(dir)
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// decompressBytes reads the payload of a package held in memory to
// io.Discard with the decoders goldvm uses: the decompression stage alone.
func decompressBytes(data []byte, format string) error {
	var r io.Reader
	switch format {
	case "tar.gz":
		zr, err := gzip.NewReader(bufio.NewReaderSize(bytes.NewReader(data), 1<<20))
		if err != nil {
			return err
		}
		r = zr
	case "tar.zst":
		zr, err := zstd.NewReader(bufio.NewReaderSize(bytes.NewReader(data), 1<<20), zstd.WithDecoderConcurrency(2))
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	case "zip":
		zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return err
		}
		for _, e := range zr.File {
			rc, err := e.OpenRaw()
			if err != nil {
				return err
			}
			fr := flate.NewReader(rc)
			if _, err := io.Copy(io.Discard, fr); err != nil {
				return err
			}
			fr.Close()
		}
		return nil
	default:
		return fmt.Errorf("unknown format %s", format)
	}
	_, err := io.Copy(io.Discard, r)
	return err
}

// prepare writes disk.raw, disk.tar and the packages unless they exist.
func prepare(dir string, size int64) error {
	raw := filepath.Join(dir, "disk.raw")
	if fi, err := os.Stat(raw); err != nil || fi.Size() != size {
		if err := genDisk(raw, size); err != nil {
			return err
		}
		for _, n := range []string{"disk.tar", "disk.tar.gz", "disk.tar.zst", "disk.zip"} {
			os.Remove(filepath.Join(dir, n))
		}
	}
	tarFile := filepath.Join(dir, "disk.tar")
	if _, err := os.Stat(tarFile); err != nil {
		if err := writeTar(raw, tarFile); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	pack := func(name string, f func(dst string) error) {
		dst := filepath.Join(dir, name)
		if _, err := os.Stat(dst); err == nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(dst + ".part"); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
				return
			}
			errs <- os.Rename(dst+".part", dst)
		}()
	}
	pack("disk.tar.gz", func(dst string) error {
		return compressFile(tarFile, dst, func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriterLevel(w, gzip.DefaultCompression) })
	})
	pack("disk.tar.zst", func(dst string) error { return sh(fmt.Sprintf("zstd -q -3 -T1 -f -o %q %q", dst, tarFile)) })
	pack("disk.zip", func(dst string) error { return writeZip(raw, dst) })
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// genDisk writes a disk-like image: per 64 KiB block, about 45% random
// bytes, 35% zeros and 20% repetitive text.
func genDisk(p string, size int64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	src := rand.NewChaCha8([32]byte{1, 2, 3})
	r := rand.New(src)
	block := make([]byte, 64<<10)
	text := []byte(strings.Repeat("Lorem ipsum dolor sit amet, /usr/lib/x86_64-linux-gnu/libc.so.6 ", 1100))[:64<<10]
	zero := make([]byte, 64<<10)
	for off := int64(0); off < size; off += int64(len(block)) {
		var b []byte
		switch k := r.IntN(100); {
		case k < 45:
			src.Read(block)
			b = block
		case k < 80:
			b = zero
		default:
			b = text
		}
		if _, err := w.Write(b[:min(int64(len(b)), size-off)]); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func writeTar(raw, dst string) error {
	in, err := os.Open(raw)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(out)
	if err := tw.WriteHeader(&tar.Header{Name: "disk.raw", Mode: 0o644, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
		return err
	}
	if _, err := io.Copy(tw, in); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return out.Close()
}

func compressFile(src, dst string, enc func(io.Writer) (io.WriteCloser, error)) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	zw, err := enc(bw)
	if err != nil {
		return err
	}
	if _, err := io.Copy(zw, in); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return out.Close()
}

func writeZip(raw, dst string) error {
	in, err := os.Open(raw)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	zw := zip.NewWriter(bw)
	zw.RegisterCompressor(zip.Deflate, func(w io.Writer) (io.WriteCloser, error) { return flate.NewWriter(w, flate.DefaultCompression) })
	w, err := zw.CreateHeader(&zip.FileHeader{Name: "disk.raw", Method: zip.Deflate})
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, in); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return out.Close()
}

// stageWork is the CPU time, on the whole machine, that each stage of a
// fetch takes when it runs alone on data already in memory: the least
// work a one-pass fetch must do, whatever it overlaps.
type stageWork struct {
	download   time.Duration // Go's HTTP client and the loopback server
	hash       time.Duration // SHA-256 of the package
	decompress time.Duration // goldvm's decoders, output discarded
	write      time.Duration // the image's non-zero blocks written and fsynced
}

func (s stageWork) sum() time.Duration { return s.download + s.hash + s.decompress + s.write }

// measureStageWork measures each stage's CPU work for the package at pkg
// (served at url) and the raw image at raw, writing into work.
func measureStageWork(url, pkg, raw, format, work string) (stageWork, error) {
	defer releaseMemory()
	var s stageWork
	var err error
	if s.download, err = busyDuring(func() error { return httpDiscard(url) }); err != nil {
		return s, err
	}
	data, err := readWarm(pkg)
	if err != nil {
		return s, err
	}
	if s.hash, err = busyDuring(func() error { sha256.Sum256(data); return nil }); err != nil {
		return s, err
	}
	if s.decompress, err = busyDuring(func() error { return decompressBytes(data, format) }); err != nil {
		return s, err
	}
	data = nil
	img, err := readWarm(raw)
	if err != nil {
		return s, err
	}
	out := filepath.Join(work, "write.out")
	defer os.Remove(out)
	s.write, err = busyDuring(func() error { return writeSparse(out, img) })
	return s, err
}

// releaseMemory gives the memory of the packages and images read into
// memory back to the system now, so that the Go runtime does not do it in
// the background during the next measurement.
func releaseMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// readWarm reads the file at p into memory and reads that memory once:
// on the development machines (virtual machines) the first pass over
// freshly allocated memory costs three times the next one, which would
// be counted against the stage measured next.
func readWarm(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err == nil {
		sha256.Sum256(b)
	}
	return b, err
}

// busyDuring runs f after a sync and returns the CPU time all CPUs spent
// on anything until f had returned.
func busyDuring(f func() error) (time.Duration, error) {
	if err := exec.Command("sync").Run(); err != nil {
		return 0, err
	}
	b := machineBusy()
	if err := f(); err != nil {
		return 0, err
	}
	return machineBusy() - b, nil
}

// writeSparse writes img to a new file at p as plainly as it can be
// done: its non-zero 4 KiB blocks in order, the zero ones left as holes,
// then one fsync.
func writeSparse(p string, img []byte) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	const block = 4096
	zero := make([]byte, block)
	for i := 0; i < len(img); {
		j := i
		for j < len(img) && j-i < 2<<20 && !bytes.Equal(img[j:min(j+block, len(img))], zero[:min(block, len(img)-j)]) {
			j += block
		}
		j = min(j, len(img))
		if j > i {
			if _, err := f.WriteAt(img[i:j], int64(i)); err != nil {
				return err
			}
		}
		for j < len(img) && bytes.Equal(img[j:min(j+block, len(img))], zero[:min(block, len(img)-j)]) {
			j += block
		}
		i = min(j, len(img))
	}
	if err := f.Truncate(int64(len(img))); err != nil {
		return err
	}
	return f.Sync()
}

// machineBusy returns the time all CPUs have spent on anything but idling
// and waiting for I/O since boot (/proc/stat), or 0 where it cannot be read.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}
