// The frames of a file that several host sessions send at once (the release archive of a fleet ship):
// each frame read from the disk once for all of them, not once per host (README "Transfer": a read of
// 132 MB per host was about 40 ms of the client's CPU per extra host). A frame is kept while a session
// that has not yet sent it may still ask for it, within a window of KEEP frames past the slowest
// session; a session further ahead, or one that fell behind what is kept, reads for itself. What is
// sent is the same bytes either way: the agent checks the whole stream's length and sha256.
import { open, type FileHandle } from 'node:fs/promises';
import { frameHeader } from './protocol.js';

/** The data bytes of one frame. */
export const FILE_FRAME = 1 << 20;
/** Room before the data for the frame header (the length in decimal and a newline). */
export const HEADER_ROOM = 16;
/** Frames kept past the slowest session's position (memory: KEEP MiB per file being sent). */
const KEEP = 32;
/** Buffers of frames every session is done with, kept to be read into again. */
const SPARE = 4;

/** A frame as sent (its header and data) and the number of data bytes in it; null past the end. */
export type FrameData = { frame: Buffer; bytes: number } | null;

/**
 * Frame i of a file for one session: release() once the channel has taken it, saying whether the
 * channel copied it by then (Channel.copiesWrites: ssh2's does). A buffer a channel may still hold
 * (a pipe's queue) is never read into again.
 */
export interface FileFrame {
  data: FrameData;
  release: (copied: boolean) => void;
}

interface Frame {
  data: Promise<FrameData>;
  /** Sessions that have it and whose channel has not taken it yet. */
  users: number;
  buf: Buffer;
  /** False once a channel that does not copy what it is given took it: its buffer is not reused. */
  reusable: boolean;
}

/** One file being sent by one or more sessions. */
class SharedFile {
  private readonly frames = new Map<number, Frame>();
  private readonly spare: Buffer[] = [];
  /** Each open reader's next frame. */
  private readonly positions = new Map<FileReader, number>();

  constructor(
    private readonly fh: FileHandle,
    private readonly onIdle: () => void,
  ) {}

  join(reader: FileReader): void {
    this.positions.set(reader, 0);
  }

  async frame(reader: FileReader, i: number): Promise<FileFrame> {
    let f = this.frames.get(i);
    if (!f && i < this.slowest() + KEEP) {
      const buf = this.spare.pop() ?? Buffer.allocUnsafe(HEADER_ROOM + FILE_FRAME);
      f = { data: this.read(buf, i), users: 0, buf, reusable: true };
      this.frames.set(i, f);
    }
    if (!f) {
      // Too far ahead of the slowest session to keep: this session's own read.
      const data = await this.read(Buffer.allocUnsafe(HEADER_ROOM + FILE_FRAME), i);
      return { data, release: () => this.advance(reader, i + 1) };
    }
    const kept = f;
    kept.users++;
    let released = false;
    const release = (copied: boolean) => {
      if (released) return;
      released = true;
      kept.users--;
      if (!copied) kept.reusable = false;
      this.advance(reader, i + 1);
    };
    try {
      return { data: await kept.data, release };
    } catch (e) {
      release(true);
      if (this.frames.get(i) === kept) this.frames.delete(i); // a failed read is not kept
      throw e;
    }
  }

  leave(reader: FileReader): void {
    this.positions.delete(reader);
    this.prune();
    if (this.positions.size === 0) {
      this.frames.clear();
      this.onIdle();
      this.fh.close().catch(() => undefined);
    }
  }

  private slowest(): number {
    let min = Infinity;
    for (const p of this.positions.values()) min = Math.min(min, p);
    return min === Infinity ? 0 : min;
  }

  private advance(reader: FileReader, next: number): void {
    const at = this.positions.get(reader);
    if (at !== undefined && at < next) this.positions.set(reader, next);
    this.prune();
  }

  /** Drops the frames every open session is past (their buffers kept to read into again). */
  private prune(): void {
    const slowest = this.slowest();
    for (const [i, f] of this.frames) {
      if (i >= slowest || f.users > 0) continue;
      this.frames.delete(i);
      if (f.reusable && this.spare.length < SPARE) this.spare.push(f.buf);
    }
  }

  /** Frame i read into buf after room for its header, the header written before it. */
  private async read(buf: Buffer, i: number): Promise<FrameData> {
    let n = 0;
    // A read of a regular file returns less than asked only at its end; read on until then anyway.
    while (n < FILE_FRAME) {
      const { bytesRead } = await this.fh.read(buf, HEADER_ROOM + n, FILE_FRAME - n, i * FILE_FRAME + n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    if (n === 0) return null;
    const header = frameHeader(n);
    const start = HEADER_ROOM - header.length;
    buf.write(header, start, 'latin1');
    return { frame: buf.subarray(start, HEADER_ROOM + n), bytes: n };
  }
}

const open_ = new Map<string, SharedFile>();

/** One session's reading of a file's frames, shared with every other session sending it now. */
export class FileReader {
  private readonly shared: SharedFile;
  private closed = false;

  private constructor(shared: SharedFile) {
    this.shared = shared;
    shared.join(this);
  }

  /** Opens `file` for one session (the open fails here, as the session's read error). */
  static async open(file: string): Promise<FileReader> {
    let shared = open_.get(file);
    if (!shared) {
      const fh = await open(file, 'r');
      shared = open_.get(file); // another session opened it meanwhile
      if (shared) await fh.close();
      else {
        const s: SharedFile = new SharedFile(fh, () => {
          if (open_.get(file) === s) open_.delete(file);
        });
        open_.set(file, (shared = s));
      }
    }
    return new FileReader(shared);
  }

  /** Frame i (from 0) of the file, or null data past its end. */
  frame(i: number): Promise<FileFrame> {
    return this.shared.frame(this, i);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.shared.leave(this);
  }
}
