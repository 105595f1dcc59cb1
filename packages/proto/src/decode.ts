import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { MeshError, MeshErrorCode } from "@inmesh/core";

/** The encode/decode pair every generated message exposes. */
export interface MessageCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: BinaryReader | Uint8Array, length?: number): T;
  fromPartial(object: never): T;
}

/** Default cap for one control-plane message; larger inputs are refused before decoding. */
export const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface DecodeOptions {
  /** @default 4 MiB */
  maxBytes?: number;
  /** Message name for error text. */
  name?: string;
}

/**
 * Decodes one protobuf message and turns every failure (truncation, wrong wire type, bad UTF-8,
 * oversized input) into a MeshError, never a crash. The decoder must also consume exactly the input.
 */
export function decodeMessage<T>(
  codec: Pick<MessageCodec<T>, "decode">,
  bytes: Uint8Array,
  options: DecodeOptions = {},
): T {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const name = options.name ?? "message";
  if (bytes.byteLength > maxBytes) {
    throw new MeshError(
      MeshErrorCode.PROTO_TOO_LARGE,
      `${name} of ${bytes.byteLength} bytes exceeds the ${maxBytes}-byte limit`,
      {
        details: { size: bytes.byteLength, maxBytes },
      },
    );
  }
  try {
    assertWellFormedFields(bytes);
    const reader = new BinaryReader(bytes);
    const message = codec.decode(reader);
    if (reader.pos !== bytes.byteLength)
      throw new Error(`decoder stopped at ${reader.pos} of ${bytes.byteLength} bytes`);
    return message;
  } catch (error) {
    throw new MeshError(MeshErrorCode.PROTO_DECODE, `malformed ${name}: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/**
 * Generated decoders stop quietly at a stray end-group tag and accept field number 0, so the top level
 * is first walked without a schema: every tag must name a field and carry a wire type that can be skipped.
 */
function assertWellFormedFields(bytes: Uint8Array): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < bytes.byteLength) {
    const [fieldNo, wireType] = reader.tag();
    if (wireType === WireType.EndGroup) throw new Error(`unexpected end-group tag for field ${fieldNo}`);
    reader.skip(wireType, fieldNo);
  }
}
