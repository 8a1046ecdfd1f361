// Command fakevmrun is a stand-in for VMware's vmrun used by the vmware
// driver's tests. It takes arguments as vmrun does
//
//	vmrun [-T ws|fusion|player] [-gu user] [-gp pass] ... COMMAND [PARAMETERS]
//
// and implements the commands goldvm uses (start, stop, suspend, reset,
// list, clone, snapshot, listSnapshots, getGuestIPAddress, checkToolsState,
// deleteVM).
// Like vmrun it prints results and "Error: ..." messages on stdout and exits
// with status 255 on error. It writes files where VMware does (a clone's
// .vmx and delta disk, a .vmsd next to a snapshotted .vmx, .lck lock
// directories) and keeps the rest of its state under $FAKEVMRUN_STATE:
//
//	running/<hash>   one file per powered-on VM: its .vmx path and boot time
//
// suspend writes the VM's state beside its .vmx as VMware does
// (<name>.vmss, holding the boot time, named by checkpoint.vmState in the
// .vmx) and powers it off; start resumes it from there, the same boot;
// reset starts a new boot.
//
//	calls.log        one line per invocation: the arguments, tab-separated
//
// Because tests may run as root, it checks permission bits itself where
// VMware would need to write into a folder.
//
// Knobs for fault injection:
//
//	FAKEVMRUN_LOCKED=1|cmd,cmd    "Error: The file is already in use" (all or listed commands)
//	FAKEVMRUN_FAIL=cmd:message    fail cmd with "Error: message"
//	FAKEVMRUN_IP_DELAY=dur        the guest reports its IP dur after start
//	FAKEVMRUN_IP_HANG=1           getGuestIPAddress hangs forever, with a child holding stdout
//	FAKEVMRUN_SOFT_STOP_HANG=1    stop soft hangs forever
//	FAKEVMRUN_CLONE_DELAY=dur     clone holds the source's lock this long
//	FAKEVMRUN_HIDE_SNAPSHOTS=1    listSnapshots reports no snapshots
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// vmError is an error vmrun reports as "Error: <msg>" with status 255.
type vmError string

func (e vmError) Error() string { return string(e) }

func fail(msg string) {
	fmt.Println("Error: " + msg)
	os.Exit(255)
}

func main() {
	if os.Getenv("FAKEVMRUN_CHILD") == "hang" {
		// A grandchild that keeps the parent's stdout open, as a helper
		// process of vmrun could.
		if st := os.Getenv("FAKEVMRUN_STATE"); st != "" {
			os.WriteFile(filepath.Join(st, "child.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		}
		time.Sleep(time.Hour)
		return
	}
	args := os.Args[1:]
	state := os.Getenv("FAKEVMRUN_STATE")
	if state == "" {
		fail("FAKEVMRUN_STATE is not set")
	}
	logCall(state, args)

	hostType := ""
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "-T", "-h", "-P", "-u", "-p", "-vp", "-gu", "-gp":
			if len(args) < 2 {
				fmt.Println("Invalid argument: " + args[0])
				os.Exit(255)
			}
			if args[0] == "-T" {
				hostType = args[1]
			}
			args = args[2:]
		default:
			fmt.Println("Invalid argument: " + args[0])
			os.Exit(255)
		}
	}
	switch hostType {
	case "", "ws", "fusion", "player":
	default:
		fail("Unknown host type: " + hostType)
	}
	if len(args) == 0 {
		fmt.Println("vmrun version 1.17.0 build-fake")
		fmt.Println("Usage: vmrun [AUTHENTICATION-FLAGS] COMMAND [PARAMETERS]")
		os.Exit(255)
	}
	cmd, params := args[0], args[1:]

	if f := os.Getenv("FAKEVMRUN_FAIL"); f != "" {
		if c, msg, ok := strings.Cut(f, ":"); ok && strings.EqualFold(c, cmd) {
			fail(msg)
		}
	}
	if l := os.Getenv("FAKEVMRUN_LOCKED"); l != "" && cmd != "list" {
		if l == "1" || contains(strings.Split(l, ","), cmd) {
			fail("The file is already in use")
		}
	}

	s := &fake{state: state}
	var err error
	switch strings.ToLower(cmd) {
	case "list":
		err = s.list(params)
	case "start":
		err = s.start(params)
	case "stop":
		err = s.stop(params)
	case "suspend":
		err = s.suspend(params)
	case "reset":
		err = s.reset(params)
	case "snapshot":
		err = s.snapshot(params)
	case "listsnapshots":
		err = s.listSnapshots(params)
	case "clone":
		err = s.clone(params)
	case "getguestipaddress":
		err = s.getGuestIPAddress(params)
	case "checktoolsstate":
		err = s.checkToolsState(params)
	case "deletevm":
		err = s.deleteVM(params)
	default:
		fmt.Println("Unrecognized command: " + cmd)
		os.Exit(255)
	}
	if err != nil {
		fail(err.Error())
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(strings.TrimSpace(x), s) {
			return true
		}
	}
	return false
}

// logCall appends the invocation to calls.log with a single write.
func logCall(state string, args []string) {
	f, err := os.OpenFile(filepath.Join(state, "calls.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	f.Write([]byte(strings.Join(args, "\t") + "\n"))
}

type fake struct{ state string }

func (s *fake) runningFile(vmx string) string {
	sum := sha256.Sum256([]byte(vmx))
	return filepath.Join(s.state, "running", hex.EncodeToString(sum[:8]))
}

// startedAt returns when vmx was started, or false if it is not running.
func (s *fake) startedAt(vmx string) (time.Time, bool) {
	data, err := os.ReadFile(s.runningFile(vmx))
	if err != nil {
		return time.Time{}, false
	}
	_, ts, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
	n, _ := strconv.ParseInt(ts, 10, 64)
	return time.Unix(0, n), true
}

// vmxArg checks and absolutizes the .vmx parameter as vmrun does.
func vmxArg(params []string) (string, error) {
	if len(params) == 0 {
		return "", vmError("Invalid argument: a path to a vmx file is required")
	}
	p, err := filepath.Abs(params[0])
	if err != nil {
		return "", vmError(err.Error())
	}
	if st, err := os.Stat(p); err != nil || st.IsDir() {
		return "", vmError(fmt.Sprintf("Cannot open VM: %s, The virtual machine cannot be found", params[0]))
	}
	return p, nil
}

// requireWritable fails as VMware would when it cannot write path.
func requireWritable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return nil // does not exist yet: its folder is checked instead
	}
	if st.Mode().Perm()&0o200 == 0 {
		return vmError("Insufficient permissions in the host operating system: " + path)
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// lock takes VMware's exclusive lock on file: a <file>.lck directory.
func lock(file string) (func(), error) {
	if err := requireWritable(filepath.Dir(file)); err != nil {
		return nil, err
	}
	l := file + ".lck"
	if err := os.Mkdir(l, 0o755); err != nil {
		if os.IsExist(err) {
			return nil, vmError("The file is already in use")
		}
		return nil, vmError(err.Error())
	}
	os.WriteFile(filepath.Join(l, "M"+strconv.Itoa(os.Getpid())+".lck"), []byte("fake"), 0o644)
	return func() { os.RemoveAll(l) }, nil
}

func (s *fake) list(params []string) error {
	ents, _ := os.ReadDir(filepath.Join(s.state, "running"))
	var vms []string
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(s.state, "running", e.Name()))
		if err != nil {
			continue
		}
		p, _, _ := strings.Cut(string(data), "\n")
		vms = append(vms, p)
	}
	sort.Strings(vms)
	fmt.Printf("Total running VMs: %d\n", len(vms))
	for _, v := range vms {
		fmt.Println(v)
	}
	return nil
}

var kvLine = regexp.MustCompile(`^\s*([^=#\s]+)\s*=\s*"?([^"]*)"?\s*$`)

// readKV reads a .vmx-style file into a lower-cased key map (last wins).
func readKV(path string) (map[string]string, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	m := map[string]string{}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		lines = append(lines, line)
		if mm := kvLine.FindStringSubmatch(line); mm != nil {
			m[strings.ToLower(mm[1])] = mm[2]
		}
	}
	return m, lines, nil
}

func (s *fake) start(params []string) error {
	vmx, err := vmxArg(params)
	if err != nil {
		return err
	}
	if len(params) > 1 && params[1] != "gui" && params[1] != "nogui" {
		return vmError("Invalid argument: " + params[1])
	}
	if _, ok := s.startedAt(vmx); ok {
		return nil
	}
	kv, _, err := readKV(vmx)
	if err != nil {
		return vmError(err.Error())
	}
	if m, err := strconv.Atoi(kv["memsize"]); err != nil || m <= 0 || m%4 != 0 {
		return vmError("The virtual machine's memory size must be a multiple of 4 MB")
	}
	if n, err := strconv.Atoi(kv["numvcpus"]); kv["numvcpus"] != "" && (err != nil || n < 1) {
		return vmError("Invalid number of virtual processors")
	}
	// The disk chain must be there, as VMware opens it at power-on.
	for k, v := range kv {
		if strings.HasSuffix(k, ".filename") && strings.HasSuffix(strings.ToLower(v), ".vmdk") {
			d := v
			if !filepath.IsAbs(d) {
				d = filepath.Join(filepath.Dir(vmx), d)
			}
			if _, err := os.Stat(d); err != nil {
				return vmError("Cannot open the disk '" + d + "' or one of the snapshot disks it depends on")
			}
		}
	}
	// A CD-ROM image that is to be connected at power-on must be there and
	// be an ISO 9660 volume (VMware would otherwise stop at a question).
	for k, v := range kv {
		dev, ok := strings.CutSuffix(k, ".devicetype")
		if !ok || !strings.EqualFold(v, "cdrom-image") || !strings.EqualFold(kv[dev+".present"], "true") ||
			!strings.EqualFold(kv[dev+".startconnected"], "true") {
			continue
		}
		iso := kv[dev+".filename"]
		if !filepath.IsAbs(iso) {
			iso = filepath.Join(filepath.Dir(vmx), iso)
		}
		b := make([]byte, 5)
		f, err := os.Open(iso)
		if err == nil {
			_, err = f.ReadAt(b, 16*2048+1)
			f.Close()
		}
		if err != nil || string(b) != "CD001" {
			return vmError("Cannot connect the CD-ROM image '" + iso + "': it is missing or not an ISO 9660 image")
		}
	}
	boot := time.Now()
	if vmss := stateFile(vmx, kv); vmss != "" {
		// Resume: the same boot goes on; the saved state is used up.
		data, err := os.ReadFile(vmss)
		if err != nil {
			return vmError("Cannot open the suspended state file '" + vmss + "'")
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		boot = time.Unix(0, n)
		if err := setKV(vmx, "checkpoint.vmState", ""); err != nil {
			return vmError(err.Error())
		}
		os.Remove(vmss)
	}
	if err := s.setRunning(vmx, boot); err != nil {
		return err
	}
	base := strings.TrimSuffix(vmx, filepath.Ext(vmx))
	os.WriteFile(filepath.Join(filepath.Dir(vmx), "vmware.log"), []byte("fake vmware.log\n"), 0o644)
	os.WriteFile(base+".nvram", []byte("nvram"), 0o644)
	return nil
}

// setRunning records vmx as powered on, booted at boot.
func (s *fake) setRunning(vmx string, boot time.Time) error {
	os.MkdirAll(filepath.Join(s.state, "running"), 0o755)
	rec := vmx + "\n" + strconv.FormatInt(boot.UnixNano(), 10) + "\n"
	if err := os.WriteFile(s.runningFile(vmx), []byte(rec), 0o644); err != nil {
		return vmError(err.Error())
	}
	return nil
}

// stateFile returns the suspended state file the .vmx (read into kv)
// names, if it exists.
func stateFile(vmx string, kv map[string]string) string {
	f := kv["checkpoint.vmstate"]
	if f == "" {
		return ""
	}
	if !filepath.IsAbs(f) {
		f = filepath.Join(filepath.Dir(vmx), f)
	}
	if !exists(f) {
		return ""
	}
	return f
}

// setKV sets key to value in a .vmx, replacing its line or appending one.
func setKV(path, key, value string) error {
	_, lines, err := readKV(path)
	if err != nil {
		return err
	}
	line := key + " = \"" + value + "\""
	done := false
	for i, l := range lines {
		if m := kvLine.FindStringSubmatch(l); m != nil && strings.EqualFold(m[1], key) {
			lines[i], done = line, true
		}
	}
	if !done {
		lines = append(lines, line)
	}
	return os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// poweredOn checks the .vmx parameter and an optional soft|hard mode
// (default soft) of stop, suspend and reset, and that the VM is powered on.
func (s *fake) poweredOn(params []string) (vmx, mode string, boot time.Time, err error) {
	vmx, err = vmxArg(params)
	if err != nil {
		return "", "", boot, err
	}
	mode = "soft"
	if len(params) > 1 {
		mode = params[1]
	}
	if mode != "soft" && mode != "hard" {
		return "", "", boot, vmError("Invalid argument: " + mode)
	}
	boot, ok := s.startedAt(vmx)
	if !ok {
		return "", "", boot, vmError("The virtual machine is not powered on: " + vmx)
	}
	return vmx, mode, boot, nil
}

func (s *fake) stop(params []string) error {
	vmx, mode, _, err := s.poweredOn(params)
	if err != nil {
		return err
	}
	if mode == "soft" && os.Getenv("FAKEVMRUN_SOFT_STOP_HANG") == "1" {
		time.Sleep(time.Hour)
	}
	os.Remove(s.runningFile(vmx))
	return nil
}

// suspend saves the VM's state to <name>.vmss, records it in the .vmx as
// checkpoint.vmState and powers the VM off.
func (s *fake) suspend(params []string) error {
	vmx, _, boot, err := s.poweredOn(params)
	if err != nil {
		return err
	}
	name := strings.TrimSuffix(filepath.Base(vmx), filepath.Ext(vmx)) + ".vmss"
	if err := os.WriteFile(filepath.Join(filepath.Dir(vmx), name), []byte(strconv.FormatInt(boot.UnixNano(), 10)+"\n"), 0o644); err != nil {
		return vmError(err.Error())
	}
	if err := setKV(vmx, "checkpoint.vmState", name); err != nil {
		return vmError(err.Error())
	}
	os.Remove(s.runningFile(vmx))
	return nil
}

// reset reboots a powered-on VM: a new boot.
func (s *fake) reset(params []string) error {
	vmx, _, _, err := s.poweredOn(params)
	if err != nil {
		return err
	}
	return s.setRunning(vmx, time.Now())
}

// snapshots returns the names recorded in the .vmsd next to vmx.
func snapshots(vmx string) ([]string, map[string]string) {
	vmsd := strings.TrimSuffix(vmx, filepath.Ext(vmx)) + ".vmsd"
	kv, _, err := readKV(vmsd)
	if err != nil {
		return nil, map[string]string{}
	}
	n, _ := strconv.Atoi(kv["snapshot.numsnapshots"])
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, kv[fmt.Sprintf("snapshot%d.displayname", i)])
	}
	return names, kv
}

func (s *fake) listSnapshots(params []string) error {
	vmx, err := vmxArg(params)
	if err != nil {
		return err
	}
	names, _ := snapshots(vmx)
	if os.Getenv("FAKEVMRUN_HIDE_SNAPSHOTS") == "1" {
		names = nil
	}
	fmt.Printf("Total snapshots: %d\n", len(names))
	for _, n := range names {
		fmt.Println(n)
	}
	return nil
}

func (s *fake) snapshot(params []string) error {
	vmx, err := vmxArg(params)
	if err != nil {
		return err
	}
	if len(params) < 2 || params[1] == "" {
		return vmError("Invalid argument: a snapshot name is required")
	}
	name := params[1]
	unlock, err := lock(vmx)
	if err != nil {
		return err
	}
	defer unlock()
	names, kv := snapshots(vmx)
	if contains(names, name) {
		return vmError("A snapshot with the name already exists")
	}
	base := strings.TrimSuffix(vmx, filepath.Ext(vmx))
	for _, p := range []string{vmx, base + ".vmsd"} {
		if err := requireWritable(p); err != nil {
			return err
		}
	}
	// The powered-off VM moves onto a new delta disk; the old one becomes
	// the snapshot's read-only base.
	n := len(names)
	delta := ""
	for i := 1; delta == ""; i++ {
		if p := fmt.Sprintf("%s-%06d.vmdk", base, i); !exists(p) {
			delta = p
		}
	}
	if err := os.WriteFile(delta, []byte("# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"disk\"\n"), 0o644); err != nil {
		return vmError(err.Error())
	}
	var b strings.Builder
	b.WriteString(".encoding = \"UTF-8\"\n")
	b.WriteString(fmt.Sprintf("snapshot.lastUID = \"%d\"\n", n+1))
	b.WriteString(fmt.Sprintf("snapshot.current = \"%d\"\n", n+1))
	for i, nm := range append(names, name) {
		b.WriteString(fmt.Sprintf("snapshot%d.uid = \"%d\"\n", i, i+1))
		b.WriteString(fmt.Sprintf("snapshot%d.displayName = \"%s\"\n", i, nm))
		b.WriteString(fmt.Sprintf("snapshot%d.numDisks = \"1\"\n", i))
		if c := kv[fmt.Sprintf("snapshot%d.numclones", i)]; c != "" {
			b.WriteString(fmt.Sprintf("snapshot%d.numClones = \"%s\"\n", i, c))
		}
	}
	b.WriteString(fmt.Sprintf("snapshot.numSnapshots = \"%d\"\n", n+1))
	if err := os.WriteFile(base+".vmsd", []byte(b.String()), 0o644); err != nil {
		return vmError(err.Error())
	}
	// Touch the .vmx, which VMware rewrites to point at the new delta.
	data, _ := os.ReadFile(vmx)
	if err := os.WriteFile(vmx, data, 0o644); err != nil {
		return vmError(err.Error())
	}
	return nil
}

func (s *fake) clone(params []string) error {
	src, err := vmxArg(params)
	if err != nil {
		return err
	}
	if len(params) < 3 {
		return vmError("Invalid argument: clone needs a destination and full|linked")
	}
	dst, err := filepath.Abs(params[1])
	if err != nil {
		return vmError(err.Error())
	}
	mode := params[2]
	if mode != "linked" && mode != "full" {
		return vmError("Invalid argument: " + mode)
	}
	snap, cloneName := "", ""
	for _, p := range params[3:] {
		switch {
		case strings.HasPrefix(p, "-snapshot="):
			snap = strings.TrimPrefix(p, "-snapshot=")
		case strings.HasPrefix(p, "-cloneName="):
			cloneName = strings.TrimPrefix(p, "-cloneName=")
		default:
			return vmError("Invalid argument: " + p)
		}
	}
	if _, err := os.Stat(dst); err == nil {
		return vmError("The destination file already exists: " + dst)
	}
	if st, err := os.Stat(filepath.Dir(dst)); err != nil || !st.IsDir() {
		return vmError("Cannot create the destination: no such folder: " + filepath.Dir(dst))
	}
	unlock, err := lock(src)
	if err != nil {
		return err
	}
	defer unlock()
	if d, err := time.ParseDuration(os.Getenv("FAKEVMRUN_CLONE_DELAY")); err == nil {
		time.Sleep(d)
	}
	names, _ := snapshots(src)
	if mode == "linked" && snap == "" {
		return vmError("A linked clone requires a snapshot to clone from")
	}
	idx := -1
	for i, n := range names {
		if n == snap {
			idx = i
		}
	}
	if snap != "" && idx < 0 {
		return vmError("Invalid snapshot name '" + snap + "'")
	}
	if cloneName == "" {
		cloneName = "Clone of " + filepath.Base(src)
	}
	_, lines, err := readKV(src)
	if err != nil {
		return vmError(err.Error())
	}
	// The clone's delta disk points back at the source's base disk.
	dstBase := strings.TrimSuffix(dst, filepath.Ext(dst))
	var out []string
	for _, line := range lines {
		m := kvLine.FindStringSubmatch(line)
		if m != nil {
			k := strings.ToLower(m[1])
			if k == "displayname" {
				continue
			}
			if strings.HasSuffix(k, ".filename") && strings.HasSuffix(strings.ToLower(m[2]), ".vmdk") {
				parent := m[2]
				if !filepath.IsAbs(parent) {
					parent = filepath.Join(filepath.Dir(src), parent)
				}
				disk := filepath.Base(dstBase) + "-cl1.vmdk"
				desc := "# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"" + parent + "\"\n"
				if err := os.WriteFile(filepath.Join(filepath.Dir(dst), disk), []byte(desc), 0o600); err != nil {
					return vmError(err.Error())
				}
				line = m[1] + " = \"" + disk + "\""
			}
		}
		out = append(out, line)
	}
	out = append(out, "displayName = \""+cloneName+"\"")
	if err := os.WriteFile(dst, []byte(strings.Join(out, "\n")+"\n"), 0o600); err != nil {
		return vmError(err.Error())
	}
	// VMware records linked clones in the source's .vmsd.
	if mode == "linked" {
		vmsd := strings.TrimSuffix(src, filepath.Ext(src)) + ".vmsd"
		if err := requireWritable(vmsd); err != nil {
			return err
		}
		f, err := os.OpenFile(vmsd, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return vmError(err.Error())
		}
		fmt.Fprintf(f, "snapshot%d.clone = \"%s\"\n", idx, dst)
		f.Close()
	}
	return nil
}

func (s *fake) guestIP(vmx string) string {
	sum := sha256.Sum256([]byte(vmx))
	return fmt.Sprintf("192.168.%d.%d", 100+sum[0]%100, 2+sum[1]%250)
}

// toolsReady reports whether the guest's tools have come up.
func (s *fake) toolsReady(started time.Time) (bool, time.Duration) {
	d, _ := time.ParseDuration(os.Getenv("FAKEVMRUN_IP_DELAY"))
	left := time.Until(started.Add(d))
	return left <= 0, left
}

func (s *fake) getGuestIPAddress(params []string) error {
	vmx, err := vmxArg(params)
	if err != nil {
		return err
	}
	wait := len(params) > 1 && params[1] == "-wait"
	started, ok := s.startedAt(vmx)
	if !ok {
		return vmError("The virtual machine is not powered on: " + vmx)
	}
	if os.Getenv("FAKEVMRUN_IP_HANG") == "1" {
		exe, _ := os.Executable()
		c := exec.Command(exe)
		c.Env = append(os.Environ(), "FAKEVMRUN_CHILD=hang")
		c.Stdout = os.Stdout
		c.Stderr = os.Stderr
		c.Start()
		time.Sleep(time.Hour)
	}
	ready, left := s.toolsReady(started)
	if !ready {
		if !wait {
			return vmError("The VMware Tools are not running in the virtual machine: " + vmx)
		}
		time.Sleep(left)
	}
	fmt.Println(s.guestIP(vmx))
	return nil
}

func (s *fake) checkToolsState(params []string) error {
	vmx, err := vmxArg(params)
	if err != nil {
		return err
	}
	started, ok := s.startedAt(vmx)
	switch ready, _ := s.toolsReady(started); {
	case !ok:
		fmt.Println("unknown")
	case ready:
		fmt.Println("running")
	default:
		fmt.Println("installed")
	}
	return nil
}

func (s *fake) deleteVM(params []string) error {
	vmx, err := vmxArg(params)
	if err != nil {
		return err
	}
	if _, ok := s.startedAt(vmx); ok {
		return vmError("The virtual machine is powered on and cannot be deleted")
	}
	unlock, err := lock(vmx)
	if err != nil {
		return err
	}
	kv, _, _ := readKV(vmx)
	dir := filepath.Dir(vmx)
	base := strings.TrimSuffix(filepath.Base(vmx), filepath.Ext(vmx))
	// The disks the VM owns (in its folder), and its own files. Like the
	// real one it leaves vmware.log behind.
	for k, v := range kv {
		if strings.HasSuffix(k, ".filename") && strings.HasSuffix(strings.ToLower(v), ".vmdk") && !filepath.IsAbs(v) {
			os.Remove(filepath.Join(dir, v))
		}
	}
	for _, ext := range []string{".vmsd", ".vmxf", ".nvram", ".vmss"} {
		os.Remove(filepath.Join(dir, base+ext))
	}
	unlock()
	if err := os.Remove(vmx); err != nil {
		return vmError(err.Error())
	}
	return nil
}
